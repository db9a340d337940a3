"""experiments.bench_defaults: the rows it judges and the table it prints (the runs themselves are the benchmark)."""

from __future__ import annotations

import pytest

from experiments.bench_defaults import TARGETS, Measurement, format_table, median_row


def _seed(accuracy: float, seconds: float, rate: float | None = 800.0) -> Measurement:
    return Measurement("rpb-train seed=0", accuracy, seconds, seconds_target=TARGETS.train_seconds, images_per_sec=rate)


def test_median_row_takes_the_median_accuracy_and_the_slowest_seed():
    row = median_row([_seed(0.97, 90.0), _seed(0.94, 130.0, None), _seed(0.96, 100.0, 600.0)])
    assert (row.accuracy, row.seconds, row.images_per_sec) == (0.96, 130.0, 700.0)
    assert (row.accuracy_target, row.seconds_target) == (0.95, 120.0)
    assert not row.passed()  # accurate enough, but one seed ran past 2 minutes
    assert median_row([_seed(0.97, 90.0), _seed(0.94, 100.0), _seed(0.96, 110.0)]).passed()
    assert not median_row([_seed(0.97, 90.0), _seed(0.94, 100.0), _seed(0.93, 110.0)]).passed()


@pytest.mark.parametrize(("judge", "word"), [(True, "FAIL"), (False, "-")])
def test_table_judges_rows_with_targets_only(judge, word):
    rows = [_seed(0.97, 125.0), Measurement("note only", 0.5, 1.0)]
    first, untargeted = format_table(rows, judge=judge).splitlines()[2:]
    assert f" {word} " in first and "0.9700" in first and "125.0" in first and "<=120" in first
    assert " - " in untargeted and "PASS" not in untargeted
