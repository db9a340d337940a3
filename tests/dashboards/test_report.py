"""rpb-report on fabricated studies: the page, its figures, its numbers, its CLI and its errors."""

import math
import re
import shutil
from pathlib import Path

import pytest

from dashboards.ablation import Setting, bias_table_params, setting_of, summarise, verdict
from dashboards.load import LocalRunReader, load_study, read_run_dir, trial_runs
from dashboards.report import main
from tests.dashboards import browser
from tests.dashboards.fakes import DEPTH, HEADS, run_config, write_run


def _img_sources(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


def _figure_names(index: Path) -> set[str]:
    return set(re.findall(r'<figure data-name="([^"]+)"', index.read_text()))


def _long_numbers(index: Path) -> list[str]:
    """Decimal numbers with more than 4 significant digits on the page, outside images and the collapsed blocks
    (the configs keep their own digits)."""
    text = re.sub(r'src="data:[^"]*"', "", index.read_text())
    text = re.sub(r"<details>.*?</details>", "", text, flags=re.S)
    return [n for n in re.findall(r"\d+\.\d+", text) if len(n.replace(".", "").lstrip("0")) > 4]


def test_bias_table_params_counts_every_block():
    config = run_config(window=5, seed=0)
    # 2d table with a class token: (2W-1)^2 + 3 rows, one column per head, one table per block.
    assert bias_table_params(config) == ((2 * 5 - 1) ** 2 + 3) * HEADS * DEPTH
    assert bias_table_params(run_config(window=5, seed=0, bias_type="none")) == 0


def test_summary_groups_seeds_by_window(ablation_journal):
    study = load_study(str(ablation_journal))
    runs = [r for _, r in trial_runs(study, LocalRunReader())]
    summaries = summarise(runs)
    assert [s.setting.window_size for s in summaries] == [(3, 3), (5, 5), (7, 7), None]
    assert all(sorted(s.seeds) == [0, 1, 2] for s in summaries)
    assert all(0 <= s.ci_low < s.mean < s.ci_high <= 1 for s in summaries)
    assert summaries[0].mean < summaries[2].mean  # the fake's accuracy grows with the window
    # Cost from summary.json (fakes.make_ablation: 30000 + table parameters, 600 - 10 W images/s, 20 + W s).
    three = summaries[0]
    assert three.epochs == 3 and three.wall_time_s == 23 and three.images_per_s == 570
    assert three.num_params == 30_000 + three.bias_params == 30_000 + (5**2 + 3) * HEADS * DEPTH


def test_wall_time_falls_back_to_the_study_and_cost_says_n_a(ablation_journal, tmp_path):
    from dashboards.ablation_page import cost_rows

    write_run(tmp_path / "r", run_config(3, 0), [0.5, 0.6])  # no cost keys in summary.json
    run = read_run_dir(tmp_path / "r")
    (bare,) = summarise([run])
    assert math.isnan(bare.wall_time_s) and math.isnan(bare.num_params)
    assert cost_rows([bare])[1][0][4:8] == ("n/a", "224", "n/a", "n/a")
    run.study_wall_s = 12.5  # what dashboards.load.results sets from the trial's datetimes
    assert summarise([run])[0].wall_time_s == 12.5
    study = load_study(str(ablation_journal))
    runs = trial_runs(study, LocalRunReader())
    trial, first = runs[0]
    assert first.study_wall_s == (trial.datetime_complete - trial.datetime_start).total_seconds()


def test_verdict_against_no_bias_and_against_a_named_setting(ablation_journal):
    summaries = summarise([r for _, r in trial_runs(load_study(str(ablation_journal)), LocalRunReader())])
    result = verdict(summaries)  # default baseline: none
    assert result.baseline.key == "none" and [r[0] for r in result.rows] == ["none", "rpb 2d 3x3", "rpb 2d 5x5",
                                                                            "rpb 2d 7x7"]  # fmt: skip
    assert [r[-1] for r in result.rows[1:]] == ["better"] * 3  # fakes: +0.16 and more over 3 seeds
    against_7 = verdict(summaries, "2d-7x7")
    assert [c.verdict for c in against_7.comparisons] == ["worse"] * 3
    missing = verdict(summaries[:3])
    assert missing.baseline is None and "choose one of: 2d-3x3, 2d-5x5, 2d-7x7" in missing.problem


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
    assert text.index("Verdict") < text.index("Accuracy and cost") < text.index("Overview")  # the verdict on top
    for part in ("Δ joint 95% CI", "p (Holm)", "better", "Student t", "bias-table params", "train img/s", "wall s/run"):
        assert part in text
    for label in ("rpb 2d 3x3", "rpb 2d 5x5", "rpb 2d 7x7"):
        assert label in text
    assert all(src.startswith("data:image/png;base64,") for src in _img_sources(ablation_report)), "one file"
    names = _figure_names(ablation_report)
    assert {
        "ablation_accuracy",
        "ablation_cost",
        "ablation_curves",
        "heatmap_rpb_2d_3x3",
        "heatmap_rpb_2d_7x7",
    } <= names
    # No plot that ranks seeds as a hyperparameter, no best "trial" that is a lucky seed.
    assert not {n for n in names if n.startswith("sweep_")} and "Best trial" not in text
    assert not re.search(r"<(script|link)\b", text), "the page must not load scripts or stylesheets"
    assert "<details><summary>training config" in text  # the YAML is collapsed
    assert not _long_numbers(ablation_report), "numbers at full precision"


def test_sweep_page_shows_pruned_trials(sweep_report):
    text = sweep_report.read_text()
    names = _figure_names(sweep_report)
    expected = {"optimization_history", "param_importances", "intermediate_values", "parallel_coordinate", "slice",
                "trial_curves"}  # fmt: skip
    assert {f"sweep_{n}" for n in expected} <= names  # a sweep keeps the importances
    assert "validation curves of the 8 kept trials" in text
    assert "pruned" in text and "slices: model.rpb.window_size, optim.lr" in text
    assert "Verdict" not in text and "Accuracy and cost" not in text  # kind=sweep
    assert '<th title="optim.lr">lr</th>' in text and "<details><summary>training config of trial" in text
    assert not _long_numbers(sweep_report), "numbers at full precision"


def test_cli_writes_the_report(ablation_journal, tmp_path, capsys, monkeypatch):
    from dashboards import report

    (tmp_path / "rep" / "figures").mkdir(parents=True)  # an older report's side folder
    assert main(["--storage", str(ablation_journal), "--out", str(tmp_path / "rep")]) == 0
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["index.html", "report.json"]
    assert "report written" in capsys.readouterr().out
    seen = {}
    monkeypatch.setattr(report, "build_report", lambda *args: seen.update(args=args) or tmp_path / "x.html")
    assert main(["--storage", str(ablation_journal), "--baseline", "2d-7x7"]) == 0
    assert seen["args"][-1] == "2d-7x7"  # the baseline reaches the page (verdict() is tested above)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--storage", "nope.journal"], "neither a database URL nor an existing Optuna journal file"),
        (["--study", "x"], "--storage is required"),
        (["--serve", "tensorboard"], "--serve tensorboard needs --logdir"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--serve", "tensorboard", "--logdir", "no/such/dir"], "--logdir 'no/such/dir' is not a folder"),
    ],
)
def test_cli_errors_are_one_sentence(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own usage errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("rpb-report: error: ") and message in err and len(err.splitlines()) == 1


def test_help_is_headed_by_the_tool(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith("rpb-report: write a study's report")


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
def test_report_is_one_file_that_reads_well_in_headless_chromium(ablation_report, sweep_report, tmp_path):
    """Copied alone into a fresh folder, each page shows all its images; heatmap text is at least 10 px and the
    heatmaps of a row are equally wide; nothing is wider than a 1280 px screen."""
    if browser.chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    for kind, report in (("ablation", ablation_report), ("sweep", sweep_report)):
        alone = tmp_path / kind / "index.html"
        alone.parent.mkdir()
        shutil.copyfile(report, alone)  # the page only: no folder beside it
        seen = browser.measure(alone, width=1280)
        figs = seen["figures"]
        assert len(figs) >= 5 and all(f["loaded"] for f in figs), f"{kind}: an image did not load"
        assert seen["page_width"] <= 1280, f"{kind}: the page is {seen['page_width']} px wide"
        assert seen["widest_table"] <= 1240, f"{kind}: a table is {seen['widest_table']} px wide"
        assert seen["min_font_px"] >= 10, f"{kind}: text at {seen['min_font_px']} px"
        heatmaps = [f for f in figs if f["heatmap"]]
        assert heatmaps and min(f["text_px"] for f in heatmaps) >= 10, f"{kind}: heatmap text below 10 px"
        rows: dict[int, set[float]] = {}
        for f in heatmaps:
            rows.setdefault(f["top"], set()).add(round(f["width"]))
        assert all(len(widths) == 1 for widths in rows.values()), f"{kind}: heatmaps of a row differ: {rows}"
        assert any(len([f for f in heatmaps if f["top"] == top]) > 1 for top in rows) or len(heatmaps) == 1
    pixels = browser.screenshot(tmp_path / "ablation" / "index.html", tmp_path / "shot.png")
    assert pixels.shape[1] == 1280 and pixels.std() > 20, "the page looks blank"
    assert (pixels.min(axis=2) < 200).mean() > 0.05, "less than 5% of the page is drawn"


def test_no_bias_runs_are_a_baseline_not_a_window(tmp_path):
    from dashboards.figures import accuracy_vs_window

    for i, (window, bias) in enumerate([(3, "2d"), (3, "none"), (5, "2d"), (5, "none")]):
        write_run(tmp_path / f"r{i}", run_config(window, seed=i, bias_type=bias), [0.5 + 0.01 * i])
    summaries = summarise([read_run_dir(tmp_path / f"r{i}") for i in range(4)])
    labels = [s.setting.label for s in summaries]
    # Every no-bias run is one setting without a window, whatever window its config names.
    assert labels == ["rpb 2d 3x3", "rpb 2d 5x5", "none"] and summaries[-1].bias_params == 0
    assert summaries[-1].setting.window_size is None and sorted(summaries[-1].seeds) == [1, 3]
    assert summaries[-1].mean == pytest.approx(0.52)  # the mean over both no-bias runs (0.51, 0.53)
    fig = accuracy_vs_window(summaries)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3x3", "5x5"]  # no x position for "none"
    assert "none (mean, 95% CI)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [pytest.approx(0.52)]


def test_intermediate_values_label_each_trial_and_name_the_metric(sweep_journal):
    from dashboards.figures import intermediate_values, trial_curves

    study = load_study(str(sweep_journal))
    study.set_user_attr("metric", "val_loss")  # the axis names what the study reports (the fake reports accuracy)
    fig = intermediate_values(study)
    ax = fig.axes[0]
    labels = {t.get_text() for t in ax.texts}
    assert labels == {f"#{t.number}" for t in study.trials if t.intermediate_values}
    assert ax.get_ylabel() == "val_loss (maximized)" and ax.get_xlabel() == "epoch"
    runs = trial_runs(study, LocalRunReader())
    curves = trial_curves(runs)
    assert {t.get_text() for t in curves.axes[0].texts} == {f"#{t.number}" for t, _ in runs}
    assert trial_curves([]).startswith("not drawn")


def test_optuna_own_tools_work_in_the_installed_project(sweep_journal):
    """study.trials_dataframe() needs pandas and optuna.visualization needs plotly: both come with the sweep extra."""
    import optuna

    study = load_study(str(sweep_journal))
    frame = study.trials_dataframe()
    assert len(frame) == len(study.trials) and "params_optim.lr" in frame.columns
    figure = optuna.visualization.plot_optimization_history(study)
    assert len(figure.data) >= 1
    assert optuna.visualization.plot_intermediate_values(study).data


def test_a_report_is_never_written_over_without_a_word(ablation_journal, tmp_path, capsys, monkeypatch):
    out = tmp_path / "rep"
    assert main(["--storage", str(ablation_journal), "--out", str(out)]) == 0
    first = (out / "index.html").read_text()
    assert main(["--storage", str(ablation_journal), "--out", str(out)]) == 0  # the same report, refreshed
    # another baseline into the same folder: refused in one sentence, exit 2
    assert main(["--storage", str(ablation_journal), "--out", str(out), "--baseline", "2d-3x3"]) == 2
    message = capsys.readouterr().err.strip()
    assert f"{out} holds the report of study 'abl'" in message and "--force" in message
    assert (out / "index.html").read_text() == first
    assert main(["--storage", str(ablation_journal), "--out", str(out), "--baseline", "2d-3x3", "--force"]) == 0
    assert (out / "index.html").read_text() != first
    # without --out, each baseline gets its own folder
    monkeypatch.chdir(tmp_path)
    assert main(["--storage", str(ablation_journal)]) == 0
    assert main(["--storage", str(ablation_journal), "--baseline", "2d-3x3"]) == 0
    assert (tmp_path / "reports" / "abl" / "index.html").is_file()
    assert (tmp_path / "reports" / "abl-vs-2d-3x3" / "index.html").is_file()
