"""`python -m sweeps.bench_overhead` runs both sides and prints a row per storage and size (a smoke test: its
figures are read by people, not asserted)."""

from __future__ import annotations

import re


def test_the_benchmark_runs_both_sides_and_prints_a_row(capsys):
    from sweeps.bench_overhead import main

    main(["--sizes", "6", "--storages", "journal"])
    out = capsys.readouterr().out
    row = re.search(r"journal\s+6 \|\s+([\d.]+) ms\s+([\d.]+) ms\s+([\d.]+)x", out)
    assert row, out
    assert float(row.group(1)) > 0 and float(row.group(2)) > 0 and float(row.group(3)) > 0
