"""Study storage: an embedded Optuna journal file by default, any SQLAlchemy URL (PostgreSQL above all) otherwise.

Only RDB storages have heartbeats: there a killed worker's trial turns stale after `grace_period` seconds and
`sweeps.recovery.RetryStaleTrial` enqueues it again. Journal files rely on `sweeps.recovery` instead.
"""

from __future__ import annotations

import importlib.util
import re
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from experiments.tracking import mask_secrets
from sweeps.recovery import RetryStaleTrial, StaleMarkingRDBStorage
from sweeps.space import SweepConfigError

_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# A pooled database connection idle this long is pinged before it is used again (`ping_idle_connections`).
PING_IDLE_S = 1.0


def is_url(storage: str) -> bool:
    return bool(_URL_RE.match(storage))


def journal_path(storage: str | None, output_dir: str | Path, study_name: str) -> Path | None:
    """The journal file a storage setting names (None for an SQLAlchemy URL)."""
    if storage is None or storage == "":
        return Path(output_dir) / f"{study_name}.journal"
    if is_url(storage):
        return None
    return Path(storage)


def _normalise_url(url: str) -> str:
    # "postgresql://" means psycopg2 to SQLAlchemy; psycopg 3 is what this project installs.
    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg2") is None:
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def build_storage(sweep_cfg, *, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """The Optuna storage of `sweep.storage`; raises SweepConfigError (one sentence) when it cannot be opened.

    Args:
        sweep_cfg: the `sweep` config node (storage, output_dir, study_name, heartbeat_interval, grace_period,
            max_retry).
        heartbeat: enable RDB heartbeats (workers); off for read-only uses such as the summary.
    """
    path = journal_path(sweep_cfg.storage, sweep_cfg.output_dir, sweep_cfg.study_name)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The open(O_EXCL) lock works on local disks and NFSv3+; its grace period frees a lock a killed
            # worker held while writing.
            backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path), grace_period=10))
            return JournalStorage(backend)
        except OSError as e:
            raise SweepConfigError(f"sweep.storage: cannot open the journal file {path} ({e.strerror}).") from e
    url = _normalise_url(str(sweep_cfg.storage))
    engine_kwargs = {}
    if url.startswith(("postgresql", "mysql")):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    kwargs = {}
    if heartbeat and sweep_cfg.heartbeat_interval:
        retry = RetryStaleTrial(max_retry=sweep_cfg.max_retry)
        kwargs = {
            "heartbeat_interval": int(sweep_cfg.heartbeat_interval),
            "grace_period": int(sweep_cfg.grace_period),
            "heartbeat_stale_trial_callback": retry,
        }
    try:
        with warnings.catch_warnings():  # heartbeat arguments are "experimental": noise in every worker
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = (StaleMarkingRDBStorage if kwargs else RDBStorage)(url, engine_kwargs=engine_kwargs, **kwargs)
        ping_idle_connections(storage.engine)
        return storage
    except ImportError as e:
        raise SweepConfigError(
            f"sweep.storage: the database driver for {mask_secrets(url)} is not installed ({e}); use "
            "postgresql+psycopg://... or sqlite:///path.db."
        ) from e
    except Exception as e:  # sqlalchemy.exc.* : unreachable host, bad credentials, unknown database, bad URL
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SweepConfigError(
            f"sweep.storage: cannot open the database {mask_secrets(url)} ({mask_secrets(reason)}); check the URL "
            "and that the server is running and reachable."
        ) from e


def ping_idle_connections(engine, idle_s: float | None = None) -> None:
    """Ping a pooled connection before it is used again after `idle_s` seconds idle (default `PING_IDLE_S`); a dead one (the server
    restarted, a proxy dropped it) is replaced before the storage uses it, so no read or write fails on it.

    SQLAlchemy's `pool_pre_ping` pings at every checkout: on PostgreSQL one more transaction for each of Optuna's
    storage calls (57 commits a trial instead of about 29, `sweeps.bench_overhead`), though the calls of one trial
    follow each other within milliseconds. A connection lost within `idle_s` of its last use fails its next call,
    as one lost in the middle of a call does with any ping. This is SQLAlchemy's documented "pessimistic" checkout
    handler, limited to idle connections.
    """
    from sqlalchemy import event, exc

    idle_s = PING_IDLE_S if idle_s is None else idle_s

    def checked_in(dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    def checked_out(dbapi_connection, record, proxy) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
            dbapi_connection.rollback()  # end the ping's transaction: it commits nothing
        except Exception as e:  # the pool drops this connection and checks out (or opens) another
            raise exc.DisconnectionError(f"an idle connection is gone ({type(e).__name__})") from e

    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "checkout", checked_out)


def describe_storage(sweep_cfg) -> str:
    """The storage for humans and logs (password masked)."""
    path = journal_path(sweep_cfg.storage, sweep_cfg.output_dir, sweep_cfg.study_name)
    return str(path) if path is not None else mask_secrets(sweep_cfg.storage)
