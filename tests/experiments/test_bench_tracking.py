"""`python -m experiments.bench_tracking --loop-efficiency` runs every preset on files it writes in their real
formats and prints a line each (a smoke test: its figures are read by people, not asserted)."""

from __future__ import annotations

import re

from experiments.bench_tracking import LOOP_PRESETS, main

TINY_MODEL = ["model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.head_dim=null"]


def test_the_loop_efficiency_benchmark_prints_a_line_per_preset(capsys):
    main(["--loop-efficiency", *LOOP_PRESETS, "--steps", "2", "--repeats", "1", *TINY_MODEL])
    out = capsys.readouterr().out
    for preset in LOOP_PRESETS:
        line = re.search(rf"\[loop efficiency\] {preset} .* efficiency ([\d.]+) \(target", out)
        assert line, out
        assert float(line.group(1)) > 0
