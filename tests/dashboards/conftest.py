"""Fabricated studies (built once per session) and their reports."""

from pathlib import Path

import pytest

from dashboards.load import LocalRunReader, load_study
from dashboards.report import build_report
from tests.dashboards.fakes import make_ablation, make_sweep


@pytest.fixture(scope="session")
def ablation_journal(tmp_path_factory) -> Path:
    return make_ablation(tmp_path_factory.mktemp("ablation"))


@pytest.fixture(scope="session")
def sweep_journal(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="session")
def ablation_report(ablation_journal, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ablation_report")
    return build_report(load_study(str(ablation_journal)), LocalRunReader(), out)


@pytest.fixture(scope="session")
def sweep_report(sweep_journal, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep_report")
    return build_report(load_study(str(sweep_journal)), LocalRunReader(), out)
