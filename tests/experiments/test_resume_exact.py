"""A run stopped after epoch 2 and resumed trains epoch 3 as the straight run does, to the last bit: with DataLoader
workers (persistent or not) as without, in fp32 and fp16. The augmentation of a sample is a pure function of (run
seed, epoch, index), so neither the loader's generator history nor a persistent worker's past can change it."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from experiments.config import compose_config
from experiments.data import EpochSeededDataset, build_dataloaders, sample_seed, set_epoch
from experiments.train import train

# digits with its random crop, dropout (the main process's RNG), 4 batches an epoch, 4 epochs (~1 s each); the resumed
# run trains two epochs after its checkpoint, so a draw that happens once per process shows too.
COMMON = [
    "data.img_size=16", "model.patch_size=4", "model.rpb.window_size=[4,4]", "model.embed_dim=16",
    "model.head_dim=8", "model.depth=1", "model.num_heads=2", "model.drop_rate=0.1", "data.batch_size=16",
    "trainer.epochs=4", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.cpu=true",
    "trainer.progress_bar=false", "trainer.heatmap_every_n_epochs=0", "tracker=none",
]  # fmt: skip
LOADERS = {
    "workers0": ["data.num_workers=0"],
    "workers2": ["data.num_workers=2"],
    "workers2-persistent": ["data.num_workers=2", "data.persistent_workers=true"],
}
DIGITS = {"name": "digits", "img_size": 16, "in_channels": 1, "num_classes": 10, "val_fraction": 0.2, "augment": True}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs(loader, precision, stop_at=None) -> the folder of that 4-epoch run, stopped after epoch `stop_at` and
    resumed (each one trained once)."""
    root = tmp_path_factory.mktemp("resume_exact")

    @functools.cache
    def run(loader: str, precision: str, stop_at: int | None = None) -> Path:
        path = root / f"{loader}-{precision}-{stop_at or 'straight'}"
        cfg = compose_config([*COMMON, *LOADERS[loader], f"trainer.mixed_precision={precision}", f"run_dir={path}"])
        train(cfg, on_epoch_end=lambda epoch, m: "stopped" if epoch == stop_at else None)
        if stop_at is not None:
            result = train(compose_config([f"resume={path}"]), on_epoch_end=lambda epoch, m: None)
            assert result["status"] == "completed" and result["epochs_run"] == 4
        return path

    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def _train_losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name}: max |diff| {(a[name] - b[name]).abs().max().item():.3g}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "loader, precision",
    [("workers0", "no"), ("workers2", "no"), ("workers2-persistent", "no"), ("workers2", "fp16")],
)
def test_stopped_and_resumed_run_equals_the_straight_run(runs, loader, precision):
    straight, resumed = runs(loader, precision), runs(loader, precision, stop_at=2)
    assert len(_train_losses(straight)) == 4
    assert _train_losses(resumed) == _train_losses(straight)
    _assert_same_weights(_weights(resumed), _weights(straight))


@pytest.mark.slow
def test_workers_do_not_change_what_is_trained(runs):
    """The main process and (persistent) workers augment a sample alike, and the data leaves dropout's RNG alone."""
    in_process, in_workers = runs("workers0", "no"), runs("workers2-persistent", "no")
    assert _train_losses(in_workers) == _train_losses(in_process)
    _assert_same_weights(_weights(in_workers), _weights(in_process))


def _epochs_of_batches(loader, epochs) -> list[torch.Tensor]:
    images = []
    for epoch in epochs:
        set_epoch(loader, epoch)
        images.append(torch.cat([x for x, _ in loader]))
    return images


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    dataset = build_dataloaders({**DIGITS, "batch_size": 512}, seed=7)[0].dataset
    assert isinstance(dataset, EpochSeededDataset)
    loader = functools.partial(torch.utils.data.DataLoader, batch_size=512, generator=torch.Generator())
    in_process, in_workers = loader(dataset), loader(dataset, num_workers=2, persistent_workers=True)
    torch.manual_seed(0)
    rng_before = torch.get_rng_state()
    by_main = _epochs_of_batches(in_process, [1, 2, 1])
    assert torch.equal(torch.get_rng_state(), rng_before)  # the main process's own draws (dropout) go on untouched
    # Workers that fetched epoch 1 before (persistent) draw what the main process draws, epoch by epoch.
    by_workers = _epochs_of_batches(in_workers, [1, 2, 1])
    for a, b in zip(by_main, by_workers):
        assert torch.equal(a, b)
    assert torch.equal(by_main[0], by_main[2]) and not torch.equal(by_main[0], by_main[1])
    # Another run seed draws other crops.
    other_seed = build_dataloaders({**DIGITS, "batch_size": 512}, seed=8)[0].dataset
    assert not torch.equal(_epochs_of_batches(loader(other_seed), [1])[0], by_main[0])


def test_sample_seed_separates_its_arguments():
    seeds = {sample_seed(seed, epoch, index) for seed in range(3) for epoch in range(3) for index in range(50)}
    assert len(seeds) == 3 * 3 * 50 and all(0 <= s < 2**64 for s in seeds)
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3) and sample_seed(-1, 0, 0) != sample_seed(1, 0, 0)
