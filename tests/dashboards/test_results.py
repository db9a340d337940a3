"""One trial, one result: a killed attempt and its retry, a pruned, a failed, a running and a waiting trial.

Every consumer (trial_runs, the ablation summary, the report's counts, tables and plots) reads one result per
cell: the completed attempt, never the killed one; pruned trials apart, never ranked or averaged.
"""

import re
from collections import Counter

import optuna
import pytest

from dashboards.ablation import summarise
from dashboards.figures import intermediate_values
from dashboards.load import LocalRunReader, results, trial_counts, trial_runs
from dashboards.report import build_report, read_counts, report_counts
from tests.dashboards.fakes import add_ablation_trial, make_sweep, retried_ablation

State = optuna.trial.TrialState


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> optuna.Study:
    return retried_ablation(tmp_path_factory.mktemp("retried"))


@pytest.fixture(scope="module")
def page(study, tmp_path_factory) -> str:
    return build_report(study, LocalRunReader(), tmp_path_factory.mktemp("retried_report")).read_text()


def _section(text: str, heading: str) -> str:
    """The HTML from the <h3> starting with `heading` to the next heading."""
    start = text.index(f"<h3>{heading}")
    ends = [i for i in (text.find("<h3>", start + 4), text.find("<h2>", start)) if i != -1]
    return text[start : min(ends, default=len(text))]


def _first_column(table_html: str, column: int = 0) -> list[int]:
    rows = re.findall(r"<tr>(.*?)</tr>", table_html.split("<tbody>", 1)[1])
    return [int(re.findall(r"<td[^>]*>(.*?)</td>", row)[column]) for row in rows]


def test_trial_runs_keeps_the_completed_attempt_of_each_cell(study):
    runs = trial_runs(study, LocalRunReader())
    assert [t.number for t, _ in runs] == [1, 2, 3, 6]  # the killed trial 0 is out, its retry 6 is in
    cells = Counter((r.config["model"]["rpb"]["window_size"][0], r.config["seed"]) for _, r in runs)
    assert set(cells.values()) == {1}


def test_results_sorts_every_trial_into_one_kind(study):
    res = results(study, LocalRunReader())
    assert [t.number for t, _ in res.complete] == [1, 2, 3, 6]
    assert [t.number for t, _ in res.pruned] == [4]
    assert [t.number for t in res.attempts] == [0, 5]
    assert res.duplicates == []
    assert res.counts == {"running": 1, "complete": 4, "pruned": 1, "fail": 2, "waiting": 1}
    assert res.counts == trial_counts(study)


def test_summary_gives_each_setting_its_seeds_once(study):
    summaries = summarise([r for _, r in trial_runs(study, LocalRunReader())])
    assert [s.setting.label for s in summaries] == ["rpb 2d 3x3", "rpb 2d 5x5"]  # the pruned 7x7 run is in no mean
    three, five = summaries
    assert sorted(three.seeds) == [0, 1] and sorted(five.seeds) == [0, 1]
    assert sorted(three.accuracies) == pytest.approx([0.70, 0.75])  # not the killed attempt's 0.20
    assert three.mean == pytest.approx(0.725) and five.mean == pytest.approx(0.81)
    assert len(three.runs) == 2 and three.epochs == 3


def test_report_counts_equal_the_studys_counts(study, page, tmp_path):
    by_state = Counter(t.state.name.lower() for t in study.get_trials())
    shown = read_counts(build_report(study, LocalRunReader(), tmp_path))
    assert shown == report_counts(study) == {s.name.lower(): by_state[s.name.lower()] for s in State}
    assert '<td data-count="fail">2</td>' in page and '<td data-count="waiting">1</td>' in page
    assert "4 complete, 1 pruned, 2 failed, 1 running, 1 waiting" in page


def test_report_lists_complete_trials_and_pruned_ones_apart(page):
    complete = _section(page, "Complete trials")
    assert "Complete trials (4)" in complete  # an ablation's runs are seeds of settings: listed, not ranked
    assert _first_column(complete, 0) == [1, 2, 3, 6]
    pruned = _section(page, "Pruned trials")
    assert _first_column(pruned) == [4] and "not ranked" in pruned
    failed = _section(page, "Failed attempts")
    assert _first_column(failed) == [0, 5]
    assert "1 attempt killed (its worker died): trial 0 retried as trial 6 (complete)." in page
    assert "1 attempt failed: trial 5 retried as trial 8 (waiting)." in page
    assert "Best trial" not in page  # the best seed of an ablation is luck, not a result
    ablation = page[page.index("<h2>Accuracy and cost") : page.index("<h2>Overview")]
    assert '<td class="l">rpb 2d 3x3</td><td class="l">0,1</td><td>0.725</td>' in ablation
    assert "7x7" not in ablation.split("<table>")[1].split("</table>")[0]  # a note, not a row
    assert "1 pruned run (trial 4)" in ablation
    assert "No verdict: the baseline &#x27;none&#x27; names no setting" in page  # no no-bias runs in this study


def test_plots_are_drawn_from_the_results_only(study):
    from dashboards.report import best_result

    assert best_result(study, results(study, LocalRunReader()))[0].number == 3 == study.best_trial.number
    fig = intermediate_values(study)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 5  # four complete and one pruned; the killed trial 0 and the failed trial 5 are not drawn
    assert sorted(tuple(line.get_ydata()) for line in lines if line.get_color() == "tab:red") == [(0.30,)]
    from optuna.visualization import matplotlib as ovm

    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        ax = ovm.plot_optimization_history(study)
    xs = sorted(int(x) for c in ax.collections for x, _ in c.get_offsets())
    assert xs == [1, 2, 3, 6]  # Optuna's plot: the complete trials only (no pruned, no failed)


def test_two_complete_trials_of_one_cell_count_once(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("kind", "ablation")
    add_ablation_trial(study, tmp_path, 3, 0, [0.5, 0.6])
    add_ablation_trial(study, tmp_path, 3, 1, [0.5, 0.7])
    add_ablation_trial(study, tmp_path, 3, 0, [0.5, 0.9])  # the same cell again, e.g. enqueued twice
    add_ablation_trial(study, tmp_path, 5, 0, [0.4], State.FAIL, "interrupted")
    add_ablation_trial(study, tmp_path, 5, 0, [0.4, 0.5], retry_of=3)
    add_ablation_trial(study, tmp_path, 5, 0, [0.4, 0.55], retry_of=3)  # a second retry of the same attempt
    add_ablation_trial(study, tmp_path, 5, 0, [0.4, 0.95], retry_of=4)  # ...and a retry of the retry: chain end
    res = results(study, LocalRunReader())
    # Cell (3, 0): the earliest complete trial. Cell (5, 0): trial 4 is superseded by its retry 6; of the two ends
    # of retry chains left (5 and 6), the earlier.
    assert [t.number for t, _ in res.complete] == [0, 1, 5]
    assert [(t.number, k.number) for t, k in res.duplicates] == [(2, 0), (4, 5), (6, 5)]
    summaries = summarise([r for _, r in trial_runs(study, LocalRunReader())])
    assert [sorted(s.seeds) for s in summaries] == [[0, 1], [0]]
    assert summaries[0].mean == pytest.approx(0.65)
    text = build_report(study, LocalRunReader(), tmp_path / "report").read_text()
    assert "each cell is counted once: trial 2 (complete) repeats trial 0" in text
    assert read_counts(tmp_path / "report" / "index.html") == trial_counts(study)
    assert _first_column(_section(text, "Complete trials"), 0) == [0, 1, 5]
    from dashboards.report import best_result

    assert best_result(study, res)[0].number == 1 and study.best_trial.number == 6  # 6 (0.95) holds no cell
    assert study.trials[2].state == State.COMPLETE  # the study itself is untouched
    assert "1 attempt interrupted (Ctrl-C): trial 3 retried as trial 5 (complete)." in text


def test_a_pruned_trial_never_ranks_and_a_cell_without_completion_keeps_one_pruned(tmp_path):
    study = optuna.create_study(direction="maximize")
    add_ablation_trial(study, tmp_path, 3, 0, [0.9], State.PRUNED, "pruned")  # higher than any complete value
    add_ablation_trial(study, tmp_path, 3, 0, [0.8], State.PRUNED, "pruned")
    add_ablation_trial(study, tmp_path, 5, 0, [0.5, 0.6])
    add_ablation_trial(study, tmp_path, 5, 0, [0.95], State.PRUNED, "pruned")  # its cell has a complete trial
    res = results(study, LocalRunReader())
    assert [t.number for t, _ in res.complete] == [2]
    assert [t.number for t, _ in res.pruned] == [0]
    assert [(t.number, k.number) for t, k in res.duplicates] == [(1, 0), (3, 2)]
    assert [t.number for t, _ in trial_runs(study, LocalRunReader())] == [2]
    text = build_report(study, LocalRunReader(), tmp_path / "report").read_text()
    assert _first_column(_section(text, "Complete trials"), 1) == [2]
    assert _first_column(_section(text, "Pruned trials")) == [0]
    assert "Best trial: #2" in text


def test_sweep_report_counts_and_keeps_pruned_trials_apart(tmp_path):
    from dashboards.load import load_study

    study = load_study(str(make_sweep(tmp_path)))
    text = build_report(study, LocalRunReader(), tmp_path / "report").read_text()
    states = Counter(t.state for t in study.trials)
    assert read_counts(tmp_path / "report" / "index.html")["pruned"] == states[State.PRUNED] == 2
    assert sorted(_first_column(_section(text, "Pruned trials"))) == [2, 5]
    assert not {2, 5} & set(_first_column(_section(text, "Complete trials"), 1))
    assert f"({states[State.COMPLETE]} complete trials)" in text
