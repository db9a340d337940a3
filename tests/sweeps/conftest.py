"""Sweep fixtures: the composed rpb-sweep config with its output under tmp_path."""

from __future__ import annotations

import pytest

from experiments.config import compose_config
from tests.sweeps.helpers import sweep_overrides


@pytest.fixture
def compose_sweep(tmp_path):
    """compose_sweep(*overrides) -> the rpb-sweep config with its output under tmp_path (fake trainer)."""

    def _compose(*overrides: str, fake: bool = True):
        return compose_config(sweep_overrides(tmp_path, *overrides, fake=fake), config_name="sweep")

    return _compose
