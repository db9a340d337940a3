"""rpb-ablate: the grid, the study it becomes, the W&B fields of its runs, and 3 windows x 3 seeds end to end."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dashboards.load import LocalRunReader, load_study, trial_runs
from dashboards.report import main as report_main
from dashboards.wandb_workspace import ablation_report, plotted_keys, sweep_workspace
from experiments.config import compose_config
from sweeps.ablation.cli import main
from sweeps.ablation.grid import TRAIN_FN, ablation_config, ablation_grid, run_factors, train_trial
from sweeps.ablation.settings import setting_label
from sweeps.space import SweepConfigError

TINY = [
    "trainer.epochs=2",
    "trainer.limit_train_batches=2",
    "data.batch_size=16",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.save_checkpoints=false",
    "trainer.heatmap_every_n_epochs=2",
    "model.depth=1",
    "model.embed_dim=16",
    "model.num_heads=2",
    "model.head_dim=8",
    "tracker.tensorboard.enabled=false",
    "trainer.progress_bar=false",
]


def _ab(**kw):
    return OmegaConf.create({"study_name": "a", "window_sizes": [3, 5, 7], "seeds": [0, 1, 2], **kw})


def test_full_product_is_a_grid():
    trials, dims, full = ablation_grid(_ab(bias_types=["2d"], modes=["clip"]))
    assert full and len(trials) == 9
    assert dims == {
        "model.rpb.window_size": ["3x3", "5x5", "7x7"],
        "model.rpb.bias_type": ["2d"],
        "model.rpb.mode": ["clip"],
        "seed": [0, 1, 2],
    }


def test_no_bias_trains_once_per_seed_and_local_needs_2d():
    trials, dims, full = ablation_grid(_ab(bias_types=["2d", "1d", "none"], modes=["clip", "local"]))
    # 2d: 3 windows x 2 modes x 3 seeds; 1d: clip only, 3 x 3; none: 3 seeds.
    assert not full and len(trials) == 18 + 9 + 3
    assert sum(not t["model.rpb.enabled"] for t in trials) == 3
    assert not [t for t in trials if t["model.rpb.bias_type"] == "1d" and t["model.rpb.mode"] == "local"]
    assert dims["model.rpb.enabled"] == [True, False]


@pytest.mark.parametrize(
    "ab, message",
    [
        (_ab(bias_types=["3d"], modes=["clip"]), r"ablation.bias_types has \['3d'\]; choose from"),
        (_ab(bias_types=["2d"], modes=[]), "ablation.modes must be a non-empty list"),
        (_ab(bias_types=["2d"], modes=["clip"], seeds=[1, 1]), "repeats a value"),
        (_ab(bias_types=["1d"], modes=["local"]), "needs a 2d bias"),
        (_ab(bias_types=["2d"], modes=["clip"], window_sizes=["big"]), "is not a window size"),
    ],
)
def test_grid_mistakes_are_one_sentence(ab, message):
    with pytest.raises(SweepConfigError, match=message):
        ablation_grid(ab)


def test_ablation_becomes_a_sweep_without_pruning(tmp_path):
    cfg = ablation_config(compose_config([f"sweep.output_dir={tmp_path}"], config_name="ablate"))
    sweep = cfg.sweep
    assert (sweep.kind, sweep.sampler.name, sweep.pruner.name, sweep.n_trials) == ("ablation", "grid", "none", None)
    from sweeps.config import check_sweep, grid_cells

    # 3 windows x 3 seeds, each one cell, and the no-position baseline once per seed
    assert len(grid_cells(sweep, check_sweep(cfg).dims)) == 12
    assert sweep.train_fn == TRAIN_FN == "sweeps.ablation.grid:train_trial" and not sweep.enqueue_defaults
    assert set(sweep.space) == {
        "model.rpb.window_size",
        "model.rpb.bias_type",
        "model.rpb.mode",
        "model.rpb.enabled",
        "seed",
    }
    pruned = ablation_config(compose_config(["ablation.prune=true"], config_name="ablate"))
    assert pruned.sweep.pruner.name == "median"  # the sweep's own pruner


def test_trial_carries_its_factors_into_wandb():
    cfg = compose_config(["model.rpb.window_size=[5,5]", "seed=3", "tracker.wandb.group=abl"])
    seen = {}
    train_trial(cfg, train_fn=lambda c, on_epoch_end=None: seen.update(cfg=c) or {"status": "completed"})
    wb, extra = seen["cfg"].tracker.wandb, seen["cfg"].tracker.extra_config
    assert {"ablation", "window-5x5", "bias-2d", "mode-clip", "seed-3"} <= set(wb.tags)
    assert dict(extra) == {"window_size": "5x5", "bias_type": "2d", "mode": "clip", "pos_embed": "none",
                           "setting": "rpb 2d 5x5", "seed": 3, "ablation": "abl"}  # fmt: skip


def test_no_bias_trial_has_no_window(tmp_path):
    """A no-bias cell carries window "none" (not the first window of the grid), and every run one window tag."""
    from sweeps.config import check_sweep
    from sweeps.objective import TrialSpec, trial_config

    cfg = ablation_config(
        compose_config([f"sweep.output_dir={tmp_path}", "ablation.bias_types=[2d,none]"], config_name="ablate")
    )
    sweep, base, _ = check_sweep(cfg)
    seen = {}

    def fake(c, on_epoch_end=None):
        seen[c.model.rpb.enabled] = c
        return {"status": "completed"}

    cells = OmegaConf.to_container(sweep.cells)
    for n, enabled in enumerate((False, True)):  # a no-bias cell (config window 3x3), then a 2d one
        params = next(p for p in cells if p["model.rpb.enabled"] is enabled)
        spec = TrialSpec(n, params, run_dir=str(tmp_path / f"t{n}"), wandb_id=f"id{n}")
        train_trial(trial_config(base, sweep, spec), train_fn=fake)
    no_bias, biased = seen[False], seen[True]
    assert no_bias.tracker.extra_config.window_size == "none" and "bias-none" in no_bias.tracker.wandb.tags
    for run, window in ((no_bias, "none"), (biased, biased.tracker.extra_config.window_size)):
        assert [t for t in run.tracker.wandb.tags if t.startswith("window-")] == [f"window-{window}"]
    assert biased.tracker.extra_config.window_size != "none"


def test_cli_names_a_bad_override(capsys):
    assert main(["--help"]) == 0 and "rpb-ablate" in capsys.readouterr().out
    assert main(["ablation.bias_types=[3d]"]) == 2
    assert "ablation.bias_types has ['3d']" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory):
    """2 window sizes and the no-position baseline x 3 seeds on digits, tiny model, 2 epochs: the real training
    loop through run_study."""
    root = tmp_path_factory.mktemp("ablate")
    args = [f"sweep.output_dir={root}", "ablation.study_name=abl", "ablation.window_sizes=[3,7]", *TINY]
    start = time.monotonic()
    rc = main(args)
    seconds = time.monotonic() - start
    # The same command again resumes the finished study: the grid is done, nothing more is trained.
    rc = rc or main(args)
    # rpb-report over it (the tests below read the page).
    rc = rc or report_main(["--storage", str(root / "abl.journal"), "--out", str(root / "report")])
    return root, rc, seconds


@pytest.mark.slow
def test_ablation_end_to_end(ablation_run):
    root, rc, seconds = ablation_run
    assert rc == 0
    study = load_study(str(root / "abl.journal"))
    assert study.user_attrs["kind"] == "ablation"
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 9
    runs = trial_runs(study, LocalRunReader())
    biased = [(t, r) for t, r in runs if r.config["model"]["rpb"]["enabled"]]
    cells = sorted((r.config["model"]["rpb"]["window_size"][0], r.config["seed"]) for _, r in biased)
    assert cells == [(w, s) for w in (3, 7) for s in (0, 1, 2)]
    assert sorted(r.config["seed"] for _, r in runs if not r.config["model"]["rpb"]["enabled"]) == [0, 1, 2]
    assert all(len(r.history) == 2 for _, r in runs) and all(r.offset_maps() for _, r in biased)

    # Every key the W&B definitions read is in a real offline W&B run of the ablation.
    run_dir = Path(biased[0][0].user_attrs["run_dir"])
    out = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json", str(run_dir / "wandb")],
        capture_output=True,
        text=True,
        check=True,
    )
    record = json.loads(out.stdout)
    keys = plotted_keys(sweep_workspace("e", "p", depth=1), ablation_report("e", "p", "abl", 1, runset_project=False))
    assert keys["history"] | keys["summary"] <= set(record["summary"]) | {"epoch", "global_step"}
    config = record["config"]
    for key in keys["config"]:
        node = config
        for part in key.split("."):
            node = node[part]
    seed, window = biased[0][1].config["seed"], biased[0][1].config["model"]["rpb"]["window_size"]
    assert config["ablation"] == "abl" and {"ablation", f"seed-{seed}", f"window-{window[0]}x{window[1]}"} <= set(
        record["tags"]
    )

    text = (root / "report" / "index.html").read_text()
    assert all(f"rpb 2d {w}x{w}" in text for w in (3, 7)) and 'data-name="heatmap_rpb_2d_7x7"' in text
    verdict = text[text.index("Verdict") :]  # the verdict table leads the page: each setting against "none"
    assert verdict.index("rpb 2d 3x3") < verdict.index("rpb 2d 7x7") and "no difference shown" in verdict
    print(f"ablation of 9 runs took {seconds:.1f} s", file=sys.stderr)


@pytest.mark.slow
@pytest.mark.browser
def test_ablation_report_opens_in_headless_chromium(ablation_run, tmp_path):
    from tests.dashboards import browser

    if browser.chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    root, rc, _ = ablation_run
    assert rc == 0
    index = root / "report" / "index.html"
    loaded, total = browser.images_loaded(index)
    assert total >= 5 and loaded == total, f"{loaded} of {total} images loaded"
    assert browser.screenshot(index, tmp_path / "shot.png").std() > 20, "the page looks blank"


def test_a_misspelt_ablation_key_is_refused():
    cfg = compose_config(["+ablation.seed=[1]"], config_name="ablate")
    with pytest.raises(SweepConfigError, match=r"ablation\.seed is not an ablation key; use one of study_name"):
        ablation_config(cfg)


def test_fixing_a_factor_in_the_sweep_is_refused():
    cfg = compose_config(["+sweep.fixed.seed=3"], config_name="ablate")
    with pytest.raises(SweepConfigError, match=r"sweep\.fixed sets the ablation factor seed"):
        ablation_config(cfg)


POSITION_AXIS = ["ablation.pos_embeds=[none,learned]", "ablation.bias_types=[2d,none]", "ablation.window_sizes=[7]"]


def test_position_axis_gives_none_abs_rpb_and_both_with_plain_labels():
    trials, dims, full = ablation_grid(
        _ab(pos_embeds=["none", "learned"], bias_types=["2d", "none"], modes=["clip"], seeds=[0])
    )
    assert dims["model.pos_embed"] == ["none", "learned"] and dims["model.rpb.enabled"] == [True, False]
    assert not full and len(trials) == 3 * 2 + 2  # per position: 3 windows with the bias, one run without it
    labels = {}
    for t in trials:
        cfg = compose_config([f"model.pos_embed={t['model.pos_embed']}", f"model.rpb.enabled={t['model.rpb.enabled']}",
                              f"model.rpb.window_size=[{t['model.rpb.window_size'][0]},{t['model.rpb.window_size'][0]}]",
                              "seed=0"])  # fmt: skip
        factors = run_factors(cfg)
        labels[factors["setting"]] = (factors["pos_embed"], factors["bias_type"])
    assert labels == {
        "rpb 2d 3x3": ("none", "2d"), "rpb 2d 5x5": ("none", "2d"), "rpb 2d 7x7": ("none", "2d"),
        "none": ("none", "none"),
        "abs (learned)+rpb 2d 3x3": ("learned", "2d"), "abs (learned)+rpb 2d 5x5": ("learned", "2d"),
        "abs (learned)+rpb 2d 7x7": ("learned", "2d"),
        "abs (learned)": ("learned", "none"),
    }  # fmt: skip
    assert setting_label("sincos", False, "2d", "7x7", "clip") == "abs (sincos)"
    assert setting_label("none", False, "2d", "7x7", "local") == "local 7x7"  # windows without a bias
    with pytest.raises(SweepConfigError, match=r"ablation.pos_embeds has \['abs'\]; choose from"):
        ablation_grid(_ab(pos_embeds=["abs"], bias_types=["2d"], modes=["clip"]))


@pytest.mark.slow
def test_position_axis_trains_the_four_settings(tmp_path):
    """none / abs / rpb / abs+rpb: one tiny run each through the real training loop, each with its own model."""
    rc = main([f"sweep.output_dir={tmp_path}", "ablation.study_name=pos", "ablation.seeds=[0]", *POSITION_AXIS,
               *TINY, "trainer.epochs=1", "tracker.wandb.mode=disabled"])  # fmt: skip
    assert rc == 0
    study = load_study(str(tmp_path / "pos.journal"))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    runs = trial_runs(study, LocalRunReader())
    settings = sorted((r.config["model"]["pos_embed"], r.config["model"]["rpb"]["enabled"]) for _, r in runs)
    assert settings == [("learned", False), ("learned", True), ("none", False), ("none", True)]
    assert all(len(r.history) == 1 and 0.0 <= r.history[0]["val_accuracy"] <= 1.0 for _, r in runs)
    # The report names each of the four settings plainly, in its verdict against the baseline "none" and beside cost.
    assert report_main(["--storage", str(tmp_path / "pos.journal"), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    verdict = page[page.index("Verdict") : page.index("Verdict") + 20000]
    assert all(label in verdict for label in ("abs (learned)", "rpb 2d 7x7", "abs (learned)+rpb 2d 7x7"))
