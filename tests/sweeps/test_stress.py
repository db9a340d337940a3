"""Stress test of the study record ("Studies you can trust"): a grid study on the journal file and a TPE study on
PostgreSQL (all four pairs with RPB_STRESS_ALL=1), 3 workers, one worker SIGKILLed mid-trial (after an epoch),
then, once the other workers have failed and retried its trial, the whole command killed while trials run (one of
them in its first epoch when one comes in time), as a machine dying; then the same command with 4 workers, then
once more.

Afterwards the study is checked for invariants, not against a snapshot:
- nothing is left RUNNING or WAITING; a grid holds every cell exactly once as a COMPLETE trial; a TPE study holds
  n_trials to n_trials + (workers - 1) finished trials;
- no trial is lost: every FAIL trial says why (status and reason); one whose worker went away is retried exactly
  once, with its params (and grid cell); the SIGKILLed worker's trial is finished by its retries from its checkpoint;
- no two finished trials share a parameter set unless one retries the other;
- the summary table (`state_counts` and the "trials" row the command printed) and the report's counts (the page's
  table, `dashboards.load.results`) equal the study's counts by state;
- the third command says the study "already holds" its trials, exits 0 and adds none.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tests.sweeps.helpers import (
    kill_group,
    popen_cli_logged,
    process_tree,
    study_storage,
    summary_row_counts,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

EPOCH_S = "0.25"  # FAKE_TRAIN_SLEEP: a 3-epoch trial takes about a second
EPOCHS = 3
LRS = (1e-3, 3e-3, 1e-2)
WINDOWS = ("3x3", "5x5", "7x7")
GRID = (
    "sweep.sampler.name=grid",
    "~sweep.space.optim",
    f"+sweep.space.optim.lr={{type: categorical, choices: [{', '.join(map(str, LRS))}]}}",
    "~sweep.space.model.drop_rate",
    "~sweep.space.model.rpb.init_std",
    "sweep.pruner.name=none",
    "sweep.n_trials=null",
    "sweep.enqueue_defaults=false",
)
TPE_TRIALS = 9
TPE = (f"sweep.n_trials={TPE_TRIALS}",)  # the default space (continuous: no repeats) and median pruner
RERUN_WORKERS = 4
MAX_RETRY = 2  # conf/sweep/default.yaml
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
FAIL_STATUSES = ("stale", "interrupted", "failed", "duplicate")
KILLED_STATUSES = ("stale", "interrupted")  # trials that must be retried (their worker went away)
RUN_TIMEOUT_S = 150  # a whole run takes 5-25 s on 2 busy cores
FRESH_WAIT_S = 5.0  # how long to wait for a trial in its first epoch before killing the command anyway


def _trials(storage, name: str) -> list[FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # the command has not created the study yet
        return []


def _worker_pid(t: FrozenTrial) -> int | None:
    return (t.user_attrs.get("worker") or {}).get("pid")


def _training(t: FrozenTrial) -> bool:
    """The trial's train() has started: the objective set it "running" and its run folder exists."""
    run_dir = t.user_attrs.get("run_dir")
    return t.user_attrs.get("status") == "running" and bool(run_dir) and Path(run_dir).is_dir()


def _record(trials: list[FrozenTrial], heartbeats: set[int] | None = None) -> str:
    """The study's trials, one a line: what a failed invariant is shown with."""
    lines = []
    for t in trials:
        u, s = t.user_attrs, t.system_attrs
        beat = "" if heartbeats is None else f" heartbeat={t._trial_id in heartbeats}"
        lines.append(
            f"#{t.number} {t.state.name} params={t.params} cell={u.get('cell')} status={u.get('status')!r} "
            f"reason={u.get('reason')!r} retry_of={u.get('retry_of')} retry_history={s.get('retry_history')} "
            f"worker={_worker_pid(t)} epochs={sorted(t.intermediate_values)} resumed_from={u.get('resumed_from')}"
            + beat
        )
    return "\n".join(lines)


def _params(t: FrozenTrial) -> dict:
    """The trial's parameter set: the ones it suggested, or those enqueued for it (a grid cell, a retry)."""
    return {**t.system_attrs.get("fixed_params", {}), **t.params}


def _key(params: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def _chain(by_number: dict[int, FrozenTrial], t: FrozenTrial) -> set[int]:
    """`t` and every trial it retries, directly or through earlier retries."""
    numbers = {t.number, *t.system_attrs.get("retry_history", [])}
    if t.user_attrs.get("retry_of") is not None:
        numbers.add(int(t.user_attrs["retry_of"]))
    return {n for n in numbers if n in by_number}


def _expected_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    counts = Counter(t.state.name.lower() for t in trials)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    counts["retried"] = sum(t.state == TrialState.FAIL and t.number in retried for t in trials)
    counts["diverged"] = sum(t.user_attrs.get("status") == "diverged" for t in trials)
    return {k: counts.get(k, 0) for k in ("complete", "pruned", "fail", "running", "waiting", "diverged", "retried")}


def check_record(trials: list[FrozenTrial], kind: str, storage: str, killed: int) -> list[str]:
    """The invariants of a study that went through the scenario; returns what is wrong (empty: nothing)."""
    problems: list[str] = []
    by_number = {t.number: t for t in trials}
    states = Counter(t.state for t in trials)
    if states[TrialState.RUNNING] or states[TrialState.WAITING]:
        problems.append(f"{states[TrialState.RUNNING]} RUNNING and {states[TrialState.WAITING]} WAITING trials left")

    # Retries: each one copies a FAIL trial (params, cell), and no trial is retried twice.
    retries_of: dict[int, list[int]] = {}
    for t in trials:
        prev = t.user_attrs.get("retry_of")
        history = t.system_attrs.get("retry_history", [])
        if prev is None and not history:
            continue
        if prev is None or not history or history[-1] != prev:
            problems.append(f"#{t.number}: retry_of={prev} and retry_history={history} disagree")
            continue
        retries_of.setdefault(prev, []).append(t.number)
        old = by_number.get(prev)
        if old is None:
            problems.append(f"#{t.number} retries #{prev}, which the study does not hold")
            continue
        if old.state != TrialState.FAIL:
            problems.append(f"#{t.number} retries #{prev}, which is {old.state.name}, not FAIL")
        # A trial killed before it drew its params has none to copy: a grid cell's come from its fixed params.
        if _params(old) and _params(old) != _params(t):
            problems.append(f"#{t.number} retries #{prev} with other params: {_params(t)} != {_params(old)}")
        if old.user_attrs.get("cell") != t.user_attrs.get("cell"):
            problems.append(
                f"#{t.number} retries #{prev} of cell {old.user_attrs.get('cell')} as cell {t.user_attrs.get('cell')}"
            )
    for prev, numbers in retries_of.items():
        if len(numbers) > 1:
            problems.append(f"#{prev} is retried {len(numbers)} times: {numbers}")

    # No trial lost: every FAIL trial says why; one whose worker went away is retried (up to max_retry).
    for t in trials:
        if t.state != TrialState.FAIL:
            continue
        status, reason = t.user_attrs.get("status"), t.user_attrs.get("reason")
        if status not in FAIL_STATUSES or not reason:
            problems.append(
                f"#{t.number} is FAIL with status={status!r} reason={reason!r}: not a failure with its reason"
            )
        exhausted = len(t.system_attrs.get("retry_history", [])) >= MAX_RETRY
        if (status in KILLED_STATUSES or status not in FAIL_STATUSES) and t.number not in retries_of and not exhausted:
            problems.append(f"#{t.number} (status {status!r}) was never retried: lost")

    # No two finished trials share a parameter set, unless one retries the other.
    finished = [t for t in trials if t.state in FINISHED]
    by_params: dict[tuple, list[FrozenTrial]] = {}
    for t in finished:
        by_params.setdefault(_key(t.params), []).append(t)
    for group in by_params.values():
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if a.number not in _chain(by_number, b) and b.number not in _chain(by_number, a):
                    problems.append(f"#{a.number} and #{b.number} both finished with params {a.params}")

    if kind == "grid":
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        cells = Counter(t.user_attrs.get("cell") for t in complete)
        for cell in range(len(LRS) * len(WINDOWS)):
            if cells[cell] != 1:
                problems.append(f"grid cell {cell} has {cells[cell]} COMPLETE trials, not exactly one")
        extra = set(cells) - set(range(len(LRS) * len(WINDOWS)))
        if extra:
            problems.append(f"COMPLETE trials outside the grid's cells: {sorted(extra, key=str)}")
        points = {_key({"optim.lr": lr, "model.rpb.window_size": w}) for lr in LRS for w in WINDOWS}
        if {_key(t.params) for t in complete} != points:
            problems.append("the COMPLETE trials' params are not the grid's 9 points")
        if states[TrialState.PRUNED]:
            problems.append(f"{states[TrialState.PRUNED]} PRUNED trials in a grid without a pruner")
    else:
        n = len(finished)
        if not TPE_TRIALS <= n <= TPE_TRIALS + RERUN_WORKERS - 1:
            problems.append(
                f"{n} finished trials; n_trials={TPE_TRIALS} allows {TPE_TRIALS}..{TPE_TRIALS + RERUN_WORKERS - 1}"
            )

    # The trial of the SIGKILLed worker: failed as killed, and its retry (or the retry of a retry killed in turn)
    # finished from the checkpoint of its reported epoch, not from scratch.
    k = by_number[killed]
    if k.state != TrialState.FAIL:
        problems.append(f"the killed worker's trial #{killed} is {k.state.name}, not FAIL")
    if storage == "journal" and k.user_attrs.get("status") != "stale":
        problems.append(f"the killed worker's trial #{killed} has status {k.user_attrs.get('status')!r}, not 'stale'")
    ends = [t for t in finished if killed in t.system_attrs.get("retry_history", [])]
    if len(ends) != 1:
        problems.append(
            f"the killed worker's trial #{killed} has {len(ends)} finished retries: {[t.number for t in ends]}"
        )
    for end in ends:
        summary = Path(end.user_attrs.get("run_dir", "")) / "summary.json"
        resumed = json.loads(summary.read_text()).get("resumed_from_epoch") if summary.is_file() else None
        if not end.user_attrs.get("resumed_from") or not resumed:
            problems.append(
                f"#{end.number}, the finished retry of #{killed}, started from scratch (resumed_from="
                f"{end.user_attrs.get('resumed_from')!r}, resumed_from_epoch={resumed!r}), not from its checkpoint"
            )
    return problems


def _run(tmp_path: Path, log: Path, overrides: list[str], env: dict, record) -> tuple[int, str]:
    """The command to its end (its workers killed too if it overruns: AssertionError with `record()`);
    (exit status, stdout and stderr)."""
    proc = popen_cli_logged(tmp_path, log, *overrides, env=env)
    try:
        proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise AssertionError(
            f"rpb-sweep {' '.join(overrides)} ran past {RUN_TIMEOUT_S} s\n--- output (tail) ---\n"
            f"{log.read_text(errors='replace')[-3000:]}\n--- the study ---\n{record()}"
        ) from None
    finally:  # also when pytest-timeout interrupts the wait: no worker outlives the test
        if proc.poll() is None:
            kill_group(proc)
    return proc.returncode, log.read_text(errors="replace")


def _heartbeats(storage) -> set[int] | None:
    """Ids of the trials with a heartbeat row (RDB storages; None elsewhere): a RUNNING trial without one is never
    failed as stale by Optuna."""
    try:
        from optuna.storages._rdb import models

        with storage.scoped_session() as session:
            return {h.trial_id for h in session.query(models.TrialHeartbeatModel).all()}
    except Exception:
        return None


# Each sampler and each storage once (grid on the journal, TPE on PostgreSQL): a cell takes 30-40 s, and what
# differs between the storages (dead workers by pid, by heartbeat) sits below the sampler. RPB_STRESS_ALL=1 runs
# the other two cells as well.
_CELLS = [("grid", "journal"), ("tpe", "postgres")]
if os.environ.get("RPB_STRESS_ALL", "").strip() not in ("", "0"):
    _CELLS += [("tpe", "journal"), ("grid", "postgres")]


@pytest.mark.parametrize(
    ("kind", "storage"),
    [pytest.param(k, s, marks=[pytest.mark.postgres] if s == "postgres" else [], id=f"{k}-{s}") for k, s in _CELLS],
)
def test_killed_worker_and_machine_then_rerun(kind, storage, tmp_path, request):
    times = {"start": time.monotonic()}
    if storage == "postgres":
        url, name = request.getfixturevalue("postgres_study")
        extra = [f"sweep.storage={url}", "sweep.heartbeat_interval=1", "sweep.grace_period=3"]
    else:
        url, name, extra = None, f"stress-{kind}", []
    overrides = [*(GRID if kind == "grid" else TPE), f"trainer.epochs={EPOCHS}", f"sweep.study_name={name}", *extra]
    env = {"FAKE_TRAIN_SLEEP": EPOCH_S}
    handle = study_storage(tmp_path, name, url)  # PostgreSQL: creates the schema before any worker touches it
    trials = lambda: _trials(handle, name)  # noqa: E731
    scenario = {"text": ""}
    record = lambda: scenario["text"] + "\n" + _record(trials(), _heartbeats(handle))  # noqa: E731

    # 1. Three workers; SIGKILL the worker of a trial that has reported its first epoch.
    log = tmp_path / "first.log"
    proc = popen_cli_logged(tmp_path, log, *overrides, "sweep.workers=3", env=env)
    try:
        # Epoch 1 reported, so it has a checkpoint and at least one more epoch to go (the median pruner never stops a
        # trial before epoch 2): it cannot finish between this poll and the kill.
        target = wait_until(
            lambda: next((t for t in trials() if t.state == TrialState.RUNNING and _worker_pid(t) and max(t.intermediate_values, default=0) == 1), None),
            timeout=120, what="a trial mid-way (RUNNING, epoch 1 reported)", proc=proc, log=log,
        )  # fmt: skip
        pid = _worker_pid(target)
        assert pid != proc.pid and pid in process_tree(proc.pid), (
            f"trial {target.number}'s worker {pid} is not one of the command's workers"
        )
        os.kill(pid, signal.SIGKILL)
        times["worker killed"] = time.monotonic()

        # 2. The other workers fail it and retry it; kill the whole command while trials are still running, at a
        # moment when one of them is training its first epoch (run folder written, no checkpoint yet), if one comes
        # in time.
        fresh_until = time.monotonic() + FRESH_WAIT_S

        def reaped_with_trials_running():
            ts = trials()
            state = next(t for t in ts if t.number == target.number).state
            assert state in (TrialState.RUNNING, TrialState.FAIL), (
                f"trial {target.number} of the killed worker is {state.name}"
            )
            # Failed and its retry enqueued. They are two writes, and a command killed between them leaves the trial
            # FAIL without a retry (a gap of sweeps.recovery / Optuna's fail_stale_trials); not the moment aimed at here.
            if state != TrialState.FAIL or not any(
                target.number in t.system_attrs.get("retry_history", []) for t in ts
            ):
                return None
            running = [t for t in ts if t.state == TrialState.RUNNING and _worker_pid(t) != pid]
            fresh = [t for t in running if not t.intermediate_values and _training(t)]
            return fresh or (time.monotonic() > fresh_until and running)

        wait_until(
            reaped_with_trials_running, timeout=90, proc=proc, log=log,
            what=f"trial {target.number} of the killed worker {pid} to be failed and retried by the others, with trials still running",
        )  # fmt: skip
    finally:
        kill_group(proc)
    times["machine killed"] = time.monotonic()
    in_flight = {t.number: sorted(t.intermediate_values) for t in trials() if t.state == TrialState.RUNNING}
    scenario["text"] = (
        f"killed worker {pid} in trial {target.number}; trials running when the command was killed (their "
        f"reported epochs): {in_flight}"
    )

    # 3. The same command with one more worker: recovers the killed trials and finishes the study.
    code, out = _run(tmp_path, tmp_path / "second.log", [*overrides, f"sweep.workers={RERUN_WORKERS}"], env, record)
    times["rerun"] = time.monotonic()
    assert code == 0, f"the re-run exited with {code}\n{out[-4000:]}"

    # 4. Invariants.
    study = optuna.load_study(study_name=name, storage=handle)
    final = study.get_trials(deepcopy=False)
    problems = check_record(final, kind, storage, target.number)
    for n in in_flight:  # each trial in flight at the machine's death was failed and then retried
        t = next(t for t in final if t.number == n)
        if t.state != TrialState.FAIL:
            problems.append(f"#{n} was running when the command was killed, and is {t.state.name}, not FAIL")

    from dashboards.load import LocalRunReader, results
    from dashboards.report import build_report, read_counts
    from sweeps.summary import state_counts

    expected = _expected_counts(final)
    if state_counts(study) != expected:
        problems.append(f"state_counts {state_counts(study)} != the study's {expected}")
    row = summary_row_counts(out)
    if row != expected:
        problems.append(f"the printed table's trials row {row} != the study's {expected}")
    by_state = {s.name.lower(): sum(t.state == s for t in final) for s in TrialState}
    page = read_counts(build_report(study, LocalRunReader(), tmp_path / "report"))
    if page != by_state:
        problems.append(f"the report page's counts {page} != the study's {by_state}")
    res = results(study, LocalRunReader())
    n_finished = by_state["complete"] + by_state["pruned"]
    if len(res.trials()) != n_finished or res.duplicates or len(res.attempts) != by_state["fail"]:
        problems.append(
            f"the report's results: {len(res.trials())} kept (study: {n_finished} finished), duplicates "
            f"{[(a.number, b.number) for a, b in res.duplicates]}, {len(res.attempts)} attempts (study: {by_state['fail']} FAIL)"
        )
    times["checked"] = time.monotonic()

    # 5. Once more: nothing left to run, exit 0, no trial added.
    code, out3 = _run(tmp_path, tmp_path / "third.log", [*overrides, f"sweep.workers={RERUN_WORKERS}"], env, record)
    times["third run"] = time.monotonic()
    if code != 0 or "already holds" not in out3:
        problems.append(f"the third run exited with {code} without saying 'already holds':\n{out3[-2000:]}")
    after = [(t.number, t.state) for t in optuna.load_study(study_name=name, storage=handle).get_trials(deepcopy=False)]
    if after != [(t.number, t.state) for t in final]:
        problems.append(f"the third run changed the study: {len(final)} -> {len(after)} trials")
    if hasattr(handle, "engine"):
        handle.engine.dispose()

    phases = list(times.items())
    print(
        f"{kind}/{storage}: " + ", ".join(f"{k} {t - phases[i][1]:.1f}s" for i, (k, t) in enumerate(phases[1:])),
        f"(total {phases[-1][1] - phases[0][1]:.1f}s); {scenario['text']}",
    )
    assert not problems, "\n".join(
        [scenario["text"], *problems, "--- the study ---", _record(final, _heartbeats(handle))]
    )
