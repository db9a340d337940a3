"""rpb-report on fabricated studies: the page, its figures, its numbers, its CLI and its errors."""

import math
import re
from pathlib import Path

import pytest

from dashboards.ablation import Setting, bias_table_params, setting_of, summarise, t_interval
from dashboards.load import LocalRunReader, load_study, read_run_dir, trial_runs
from dashboards.report import main
from tests.dashboards import browser
from tests.dashboards.fakes import DEPTH, HEADS, run_config, write_run


def _img_sources(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


def test_t_interval_matches_student_t():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    # std = 1, n = 3, t_{0.975, 2} = 4.302653
    assert mean == 2.0
    assert high - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert mean - low == pytest.approx(high - mean)
    assert math.isnan(t_interval([0.5])[1])


def test_bias_table_params_counts_every_block():
    config = run_config(window=5, seed=0)
    # 2d table with a class token: (2W-1)^2 + 3 rows, one column per head, one table per block.
    assert bias_table_params(config) == ((2 * 5 - 1) ** 2 + 3) * HEADS * DEPTH
    assert bias_table_params(run_config(window=5, seed=0, bias_type="none")) == 0


def test_summary_groups_seeds_by_window(ablation_journal):
    study = load_study(str(ablation_journal))
    runs = [r for _, r in trial_runs(study, LocalRunReader())]
    summaries = summarise(runs)
    assert [s.setting.window_size for s in summaries] == [(3, 3), (5, 5), (7, 7)]
    assert all(sorted(s.seeds) == [0, 1, 2] for s in summaries)
    assert all(s.ci_low < s.mean < s.ci_high for s in summaries)
    assert summaries[0].mean < summaries[-1].mean  # the fake's accuracy grows with the window
    assert summaries[0].epochs == 3 and summaries[0].wall_time_s == pytest.approx(4.5)


def test_run_dir_reader_skips_a_torn_last_line(tmp_path):
    write_run(tmp_path / "r", run_config(3, 0), [0.1, 0.2])
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "val_acc')  # killed mid-write
    run = read_run_dir(tmp_path / "r")
    assert [row["epoch"] for row in run.history] == [0, 1]
    assert setting_of(run) == Setting("2d", "clip", (3, 3))
    assert set(run.offset_maps()) == set(range(DEPTH))


def test_ablation_page_has_every_part(ablation_report):
    text = ablation_report.read_text()
    for part in ("Ablation: window size", "95% CI (t)", "bias-table params", "wall time", "Best trial"):
        assert part in text
    for label in ("3x3 2d", "5x5 2d", "7x7 2d"):
        assert label in text
    sources = _img_sources(ablation_report)
    assert not [s for s in sources if "://" in s or s.startswith("/")], "images must be relative files"
    assert all((ablation_report.parent / s).is_file() for s in sources)
    names = {Path(s).stem for s in sources}
    assert {"ablation_accuracy", "ablation_curves", "heatmap_3x3_2d", "heatmap_7x7_2d", "best_block_00"} <= names
    assert not re.search(r"<(script|link)\b", text), "the page must not load scripts or stylesheets"


def test_sweep_page_shows_pruned_trials(sweep_report):
    text = sweep_report.read_text()
    names = {Path(s).stem for s in _img_sources(sweep_report)}
    expected = {"optimization_history", "param_importances", "intermediate_values", "parallel_coordinate", "slice"}
    assert {f"sweep_{n}" for n in expected} <= names
    assert "pruned" in text and "slices: model.rpb.window_size, optim.lr" in text
    assert "Ablation" not in text  # kind=sweep


def test_cli_writes_the_report(ablation_journal, tmp_path, capsys):
    assert main(["--storage", str(ablation_journal), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "index.html").is_file()
    assert "report written" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--storage", "nope.journal"], "neither a database URL nor an existing Optuna journal file"),
        (["--study", "x"], "--storage is required"),
        (["--serve", "tensorboard"], "--serve tensorboard needs --logdir"),
    ],
)
def test_cli_errors_are_one_sentence(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(argv)


def test_serve_runs_the_dashboards_on_loopback(ablation_journal, tmp_path, monkeypatch):
    from dashboards import serve

    started = []
    monkeypatch.setattr(serve, "serve", lambda cmd: started.append(cmd) or 0)
    assert main(["--serve", "optuna", "--storage", str(ablation_journal)]) == 0
    assert main(["--serve", "tensorboard", "--logdir", str(tmp_path), "--port", "7007"]) == 0
    optuna_cmd, tb_cmd = started
    assert Path(optuna_cmd[0]).name == "optuna-dashboard" and optuna_cmd[1] == str(ablation_journal)
    assert optuna_cmd[optuna_cmd.index("--port") + 1] == "8080" and tb_cmd[-4:] == [
        "--host",
        "127.0.0.1",
        "--port",
        "7007",
    ]


def test_unknown_study_name_is_named(ablation_journal):
    with pytest.raises(ValueError, match="--study 'other' is not in the storage; it holds: abl"):
        load_study(str(ablation_journal), "other")


@pytest.mark.browser
def test_report_renders_in_headless_chromium(ablation_report, tmp_path):
    if browser.chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    loaded, total = browser.images_loaded(ablation_report)
    assert total >= 10 and loaded == total, f"{loaded} of {total} images loaded"
    pixels = browser.screenshot(ablation_report, tmp_path / "shot.png")
    assert pixels.std() > 20, "the page looks blank"
    assert (pixels.min(axis=2) < 200).mean() > 0.05, "less than 5% of the page is drawn"


def test_no_bias_runs_are_a_baseline_not_a_window(tmp_path):
    from dashboards.figures import accuracy_vs_window

    for i, (window, bias) in enumerate([(3, "2d"), (3, "none"), (5, "2d"), (5, "none")]):
        write_run(tmp_path / f"r{i}", run_config(window, seed=i, bias_type=bias), [0.5 + 0.01 * i])
    summaries = summarise([read_run_dir(tmp_path / f"r{i}") for i in range(4)])
    labels = [s.setting.label for s in summaries]
    # Every no-bias run is one setting without a window, whatever window its config names.
    assert labels == ["3x3 2d", "5x5 2d", "no bias"] and summaries[-1].bias_params == 0
    assert summaries[-1].setting.window_size is None and sorted(summaries[-1].seeds) == [1, 3]
    assert summaries[-1].mean == pytest.approx(0.52)  # the mean over both no-bias runs (0.51, 0.53)
    fig = accuracy_vs_window(summaries)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3x3", "5x5"]  # no x position for "none"
    assert "no bias (mean, 95% CI)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [pytest.approx(0.52)]
