"""Sweep fixtures: the composed rpb-sweep config with its output under tmp_path."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from experiments.config import compose_config
from tests.sweeps.helpers import sweep_overrides


@pytest.fixture
def compose_sweep(tmp_path):
    """compose_sweep(*overrides) -> the rpb-sweep config with its output under tmp_path (fake trainer)."""

    def _compose(*overrides: str, fake: bool = True):
        return compose_config(sweep_overrides(tmp_path, *overrides, fake=fake), config_name="sweep")

    return _compose


# --- PostgreSQL (tests marked `postgres`) ------------------------------------------------------------------------
# `.ci/run` starts the server when it is down, creates a fresh database and exports its URL in RPB_TEST_POSTGRES_URL.
# Without it the tests use a database of their own on the default server and drop it at the end. An unreachable
# server skips them, except in CI (`CI` set), where it fails them: CI must never skip them silently.
POSTGRES_URL_ENV = "RPB_TEST_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _libpq_url(url: str) -> str:
    """The URL psycopg itself takes (SQLAlchemy's `postgresql+psycopg://` names the driver)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


def _with_database(url: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of a PostgreSQL database the tests may create studies in (each test its own study name)."""
    given = os.environ.get(POSTGRES_URL_ENV)
    try:
        import psycopg
    except ImportError as e:
        if given or _in_ci():
            pytest.fail(f"psycopg is not installed ({e}): the postgres tests cannot run", pytrace=False)
        pytest.skip(f"psycopg is not installed ({e})")
    url = given or DEFAULT_POSTGRES
    try:
        conn = psycopg.connect(_libpq_url(url), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        reason = f"no PostgreSQL at {url} ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
        if given or _in_ci():
            pytest.fail(
                f"{reason}; {POSTGRES_URL_ENV}={given!r}, CI={os.environ.get('CI')!r}: not skipped", pytrace=False
            )
        pytest.skip(f"{reason}; set {POSTGRES_URL_ENV} or start the server (`.ci/run` does both)")
    if given:
        conn.close()
        _create_schema(url)
        yield url
        return
    database = f"rpb_test_{uuid.uuid4().hex[:10]}"
    conn.execute(f"CREATE DATABASE {database}")
    try:
        yield _with_database(url, database)
    finally:
        conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        conn.close()


@pytest.fixture
def postgres_counted_study(postgres_url):
    """(url, study_name) in a database of this test's own on the test server, dropped afterwards: for tests that
    count the server's commits, which `pg_stat_database` counts per database (pytest-xdist runs two test processes,
    and the other's tests would count in a shared one)."""
    import psycopg

    database = f"rpb_count_{uuid.uuid4().hex[:10]}"
    admin = _with_database(_libpq_url(postgres_url), "postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    try:
        yield _with_database(postgres_url, database), "counted"
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def _create_schema(url: str) -> None:
    """Optuna's tables in the shared database, created by one test process at a time (pytest-xdist runs two, and
    two first connections racing to create them fail one with a duplicate-key error)."""
    import fcntl
    import hashlib
    import tempfile

    import optuna

    lock = Path(tempfile.gettempdir()) / f"rpb-test-schema-{hashlib.sha1(url.encode()).hexdigest()[:12]}.lock"
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        optuna.storages.RDBStorage(_normalise(url)).engine.dispose()


@pytest.fixture
def postgres_study(postgres_url, request):
    """(url, study_name): a study name of this test's own in the test database; the study is deleted afterwards."""
    import optuna

    base, _, params = request.node.name.removeprefix("test_").partition("[")
    name = "-".join(filter(None, (base[:20], params.rstrip("]"), uuid.uuid4().hex[:8])))
    yield postgres_url, name
    storage = optuna.storages.RDBStorage(_normalise(postgres_url))
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:  # the test failed before the study was created
        pass
    finally:
        storage.engine.dispose()


def _normalise(url: str) -> str:
    from sweeps.storage import _normalise_url

    return _normalise_url(url)
