"""The precision a run trains in: trainer.mixed_precision when set, else the launcher's (`accelerate launch
--mixed_precision` or its config file: ACCELERATE_MIXED_PRECISION), else "no"; config.yaml records it, never null.

"Trains in" is observed, not read back from a setting: a forward hook on every nn.Linear of the model records the
dtype of its outputs during training (bf16 under autocast, float32 without).

Run as a script (by `test_accelerate_launch_bf16_trains_in_bf16`, under `accelerate launch`), this file is rpb-train's
entry point with those hooks in place; it writes the dtypes it saw to the file named by DTYPES_ENV.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from experiments.config import ConfigError, resolve_mixed_precision
from experiments.launch import MIXED_PRECISION_ENV

REPO = Path(__file__).resolve().parents[2]
DTYPES_ENV = "RPB_TEST_LINEAR_DTYPES"  # where the script mode writes the dtypes it saw
TINY = ["model.depth=1", "model.embed_dim=16", "model.num_heads=2", "model.head_dim=null", "trainer.epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.progress_bar=false", "tracker=none",
        "data.augment=false"]  # fmt: skip


def watch_linear_dtypes(seen: set[str]) -> None:
    """Make experiments.train build models whose nn.Linear layers add their output dtype to `seen`."""
    import experiments.train as train_module

    build = train_module.build_model

    def build_and_watch(cfg):
        model = build(cfg)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda mod, args, out: seen.add(str(out.dtype).removeprefix("torch.")))
        return model

    train_module.build_model = build_and_watch


def _saved_precision(run: Path) -> str | None:
    return OmegaConf.load(run / "config.yaml").trainer.mixed_precision


@pytest.fixture
def watched(monkeypatch):
    """The dtypes the Linear layers of the next train() produce."""
    import experiments.train as train_module

    monkeypatch.setattr(train_module, "build_model", train_module.build_model)  # undone after the test
    seen: set[str] = set()
    watch_linear_dtypes(seen)
    return seen


# --- resolving ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("configured", "launcher", "expected", "note"),
    [
        (None, None, "no", False),  # plain python, nothing set
        (None, "no", "no", False),
        (None, "bf16", "bf16", False),  # accelerate launch --mixed_precision bf16
        (None, "BF16", "bf16", False),
        ("fp16", None, "fp16", False),
        ("bf16", "no", "bf16", False),  # accelerate launch's "no" is also its default: not a disagreement
        ("bf16", "bf16", "bf16", False),
        ("fp16", "bf16", "fp16", True),  # the config is explicit: it wins, and says so
        ("no", "bf16", "no", True),
    ],
)
def test_resolve_mixed_precision(monkeypatch, configured, launcher, expected, note):
    if launcher is None:
        monkeypatch.delenv(MIXED_PRECISION_ENV, raising=False)
    else:
        monkeypatch.setenv(MIXED_PRECISION_ENV, launcher)
    precision, sentence = resolve_mixed_precision(configured)
    assert precision == expected
    assert (sentence is not None) == note
    if note:
        assert sentence.startswith(f"trainer.mixed_precision={configured} overrides bf16 from accelerate launch ")
        assert sentence.endswith(f"training in {configured}; drop one of them to silence this.")


def test_a_launcher_precision_we_do_not_train_in_is_refused(monkeypatch):
    monkeypatch.setenv(MIXED_PRECISION_ENV, "fp8")
    with pytest.raises(ConfigError, match=r"^fp8 from accelerate launch .* set trainer\.mixed_precision"):
        resolve_mixed_precision(None)
    assert resolve_mixed_precision("bf16")[0] == "bf16"  # set in the config, the launcher's fp8 does not matter


def test_the_default_is_unset_and_null_is_allowed(compose):
    assert compose().trainer.mixed_precision is None
    with pytest.raises(ConfigError, match=r"trainer\.mixed_precision='fp8' is not allowed: .*no, fp16, bf16 \(or null"):
        compose(["trainer.mixed_precision=fp8"])


def test_a_studys_identity_records_the_precision_its_trials_train_in(tmp_path, monkeypatch):
    """Studies recorded before trainer.mixed_precision could be null hold "no": a command with nothing set still
    matches them, and one launched with bf16 does not (its trials compute something else)."""
    from experiments.config import compose_config
    from sweeps.config import check_sweep
    from sweeps.identity import study_identity
    from tests.sweeps.helpers import sweep_overrides

    def precision_in_identity(*overrides: str) -> str:
        cfg = compose_config(sweep_overrides(tmp_path, *overrides), config_name="sweep")
        return study_identity(check_sweep(cfg))["base"]["trainer.mixed_precision"]

    monkeypatch.delenv(MIXED_PRECISION_ENV, raising=False)
    assert precision_in_identity() == "no"
    monkeypatch.setenv(MIXED_PRECISION_ENV, "bf16")
    assert precision_in_identity() == "bf16"
    assert precision_in_identity("trainer.mixed_precision=no") == "no"


# --- training in process ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("launcher", "configured", "trained", "dtype"),
    [
        (None, None, "no", "float32"),
        ("bf16", None, "bf16", "bfloat16"),  # what a launch with --mixed_precision bf16 gives the process
        ("bf16", "no", "no", "float32"),  # the config wins
    ],
)
def test_train_follows_the_launcher_unless_the_config_says(
    compose, monkeypatch, capsys, watched, tmp_path, launcher, configured, trained, dtype
):
    from experiments.train import train

    if launcher is None:
        monkeypatch.delenv(MIXED_PRECISION_ENV, raising=False)
    else:
        monkeypatch.setenv(MIXED_PRECISION_ENV, launcher)
    overrides = [] if configured is None else [f"trainer.mixed_precision={configured}"]
    result = train(compose([*overrides, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]))
    assert result["status"] == "completed"
    assert _saved_precision(tmp_path / "run") == trained  # never null
    assert watched == {dtype}
    notes = [line for line in capsys.readouterr().err.splitlines() if "overrides" in line]
    assert notes == ([] if configured is None else [
        f"trainer.mixed_precision={configured} overrides {launcher} from accelerate launch (--mixed_precision or its "
        f"config file): training in {configured}; drop one of them to silence this."
    ])  # fmt: skip


# --- real launches ------------------------------------------------------------------------------------------------
def _launch(launch_args: list[str], target: list[str], cwd: Path, extra_env: dict | None = None):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, "--dynamo_backend", "no", *target]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(extra_env or {})}
    env.pop(MIXED_PRECISION_ENV, None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_accelerate_launch_bf16_trains_in_bf16_and_resume_keeps_it(tmp_path, monkeypatch, watched):
    """`accelerate launch --mixed_precision bf16` with trainer.mixed_precision unset trains in bf16 and records it;
    resumed under plain python (no launcher), the run reads bf16 back and goes on in bf16."""
    from experiments.config import compose_config
    from experiments.train import extend_run, train

    run, dtypes = tmp_path / "run", tmp_path / "dtypes.json"
    proc = _launch(["--mixed_precision", "bf16", "--num_processes", "1", "--num_machines", "1"],
                   [__file__, *TINY, f"run_dir={run}"], tmp_path, {DTYPES_ENV: str(dtypes)})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _saved_precision(run) == "bf16"
    assert json.loads(dtypes.read_text()) == ["bfloat16"]  # autocast ran in bf16 in the launched process

    monkeypatch.delenv(MIXED_PRECISION_ENV, raising=False)
    extend_run(run, 2)  # what `rpb-train resume=RUN trainer.epochs=2` does before train()
    result = train(compose_config([f"resume={run}"]))
    assert result["status"] == "completed" and result["epochs_run"] == 2
    assert _saved_precision(run) == "bf16" and watched == {"bfloat16"}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_config_wins_over_the_launcher_and_says_so_once(tmp_path):
    run = tmp_path / "run"
    launch = ["--mixed_precision", "bf16", "--num_processes", "1", "--num_machines", "1"]
    proc = _launch(launch, ["-m", "experiments.cli", *TINY, "trainer.mixed_precision=fp16", f"run_dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    notes = [line for line in proc.stderr.splitlines() if "overrides" in line]
    assert notes == [
        "trainer.mixed_precision=fp16 overrides bf16 from accelerate launch (--mixed_precision or its config file): "
        "training in fp16; drop one of them to silence this."
    ]
    assert _saved_precision(run) == "fp16"


if __name__ == "__main__":  # launched by test_accelerate_launch_bf16_trains_in_bf16_and_resume_keeps_it
    from experiments.cli import main

    seen_dtypes: set[str] = set()
    watch_linear_dtypes(seen_dtypes)
    try:
        main()
    finally:
        Path(os.environ[DTYPES_ENV]).write_text(json.dumps(sorted(seen_dtypes)))
