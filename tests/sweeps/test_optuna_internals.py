"""What the sweeps rely on in Optuna's private API (`sweeps.optuna_internals`), pinned: an Optuna upgrade that changes
any of it fails here, not in a study. Hyperband's `_get_bracket_id` is pinned by tests/sweeps/test_pruners.py."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.optuna_internals import (
    WorkerStudy,
    all_trials,
    trial_id,
    trial_record,
)


def test_a_running_trial_reads_the_record_it_was_enqueued_with():
    study = optuna.create_study()
    study.add_trial(  # as sweeps.recovery enqueues a retry: with the killed attempt's epochs
        optuna.create_trial(
            state=TrialState.WAITING, params={"x": 1.0},
            distributions={"x": optuna.distributions.FloatDistribution(0, 2)},
            user_attrs={"cell": 3}, system_attrs={"retry_history": [0]}, intermediate_values={2: 0.5},
        )
    )  # fmt: skip
    trial = study.ask()
    record = trial_record(trial)
    assert record.number == trial.number and record.user_attrs["cell"] == 3 and trial.params == {"x": 1.0}
    assert record.intermediate_values == {2: 0.5} and record.system_attrs["retry_history"] == [0]
    trial.set_user_attr("status", "running")  # the trial's own writes show in it, as in the storage
    assert record.user_attrs["status"] == "running" == study.trials[0].user_attrs["status"]


def test_all_trials_through_the_storage():
    study = optuna.create_study()
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    study.ask()
    assert [t.number for t in all_trials(study)] == [0, 1, 2]


def test_an_empty_queue_reaches_the_hook_before_a_trial_is_created():
    class Stop(Exception):
        pass

    class OnlyQueued(WorkerStudy):
        def nothing_waiting(self) -> None:
            raise Stop

    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="q", storage=storage)
    study = OnlyQueued(study_name="q", storage=storage)
    study.enqueue_trial({"x": 1.0})
    assert study.ask().params == {} and study.trials[0].state == TrialState.RUNNING
    with pytest.raises(Stop):
        study.ask()
    assert len(study.trials) == 1  # no trial created past the queue


def _storages(tmp_path, postgres=None):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    yield "journal", JournalStorage(JournalFileBackend(str(tmp_path / "s.journal")))
    yield "sqlite", optuna.storages.get_storage(f"sqlite:///{tmp_path / 's.db'}")  # cached, as Optuna wraps RDB
    yield "memory", optuna.storages.InMemoryStorage()
    if postgres is not None:
        yield "postgres", optuna.storages.get_storage(postgres)


@pytest.mark.parametrize("kind", ["journal", "sqlite", "memory"])
def test_several_attrs_are_one_write_and_read_back_as_written(tmp_path, kind, monkeypatch):
    """`set_trial_attrs`: one journal append (one lock, one fsync) or one RDB transaction for all the attrs; every
    reader (this process, a fresh one) sees each attr as Optuna's own setters write it."""
    from optuna.storages.journal import JournalFileBackend

    from sweeps.optuna_internals import set_trial_attrs

    storage = dict(_storages(tmp_path))[kind]
    appends = []
    original = JournalFileBackend.append_logs
    monkeypatch.setattr(
        JournalFileBackend, "append_logs", lambda self, logs: appends.append(len(logs)) or original(self, logs)
    )
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    set_trial_attrs(storage, trial_id(trial), {"status": "running", "run_dir": "/r", "worker": {"pid": 1}},
                    {"draw_index": 4})  # fmt: skip
    frozen = study.trials[0]
    assert frozen.user_attrs == {"status": "running", "run_dir": "/r", "worker": {"pid": 1}}
    assert frozen.system_attrs == {"draw_index": 4}
    if kind == "journal":
        assert appends[-1] == 4  # the four entries in one append
        fresh = optuna.load_study(study_name=study.study_name, storage=optuna.storages.JournalStorage(
            JournalFileBackend(str(tmp_path / "s.journal"))))  # fmt: skip
        assert fresh.trials[0].user_attrs == frozen.user_attrs and fresh.trials[0].system_attrs == {"draw_index": 4}


@pytest.mark.parametrize("kind", ["journal", "sqlite", "memory"])
def test_attrs_written_again_are_replaced_and_parameters_are_checked_as_optuna_checks_them(tmp_path, kind):
    """The second write of an attr replaces it (RDB: an upsert of several rows); a parameter goes in with the attrs,
    and one whose distribution differs from the study's for its name is refused with nothing written (RDB)."""
    from sweeps.optuna_internals import set_trial_attrs

    storage = dict(_storages(tmp_path))[kind]
    study = optuna.create_study(storage=storage)
    first = study.ask()
    first.suggest_float("x", 0.0, 1.0)  # the study's distribution of "x" from here on
    study.tell(first, 1.0)
    trial = study.ask()
    set_trial_attrs(storage, trial_id(trial), {"status": "running", "run_dir": "/r"}, {"draw_index": 1})
    x = optuna.distributions.FloatDistribution(0.0, 1.0)
    set_trial_attrs(storage, trial_id(trial), {"status": "completed"}, {"draw_index": 2}, [("x", 0.25, x)])
    frozen = all_trials(study)[1]
    assert frozen.user_attrs == {"status": "completed", "run_dir": "/r"} and frozen.system_attrs == {"draw_index": 2}
    assert frozen.params == {"x": 0.25}
    if kind == "journal":  # a journal's entries are read one by one: the refusal is checked on RDB and in memory
        return
    other = study.ask()
    other_x = optuna.distributions.CategoricalDistribution(["a", "b"])
    with pytest.raises(ValueError):
        set_trial_attrs(storage, trial_id(other), {"status": "running"}, params=[("x", 0, other_x)])
    assert all_trials(study)[2].params == {}
    if kind == "sqlite":
        assert all_trials(study)[2].user_attrs == {}  # one transaction: nothing of it was written


@pytest.mark.parametrize("kind", ["journal", "sqlite", "memory"])
def test_attrs_of_a_finished_trial_are_refused_once_and_nothing_is_left_to_raise_later(tmp_path, kind):
    from optuna.exceptions import UpdateFinishedTrialError

    from sweeps.optuna_internals import set_trial_attrs

    storage = dict(_storages(tmp_path))[kind]
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(UpdateFinishedTrialError):
        set_trial_attrs(storage, trial_id(trial), {"status": "stale", "reason": "gone"}, {"draw_index": 1})
    assert study.trials[0].user_attrs == {} and study.trials[0].system_attrs == {}
    study.tell(study.ask(), 2.0)  # the next writes and reads of this process raise nothing left over
    assert [t.value for t in study.trials] == [1.0, 2.0]


def _commits(url: str) -> int:
    """The commits of the test database so far (`pg_stat_database.xact_commit`, this read's own included)."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def test_several_attrs_are_one_postgres_transaction(postgres_counted_study):
    """On PostgreSQL every write is a commit (`pg_stat_database.xact_commit`): the attrs together are one."""
    from sweeps.optuna_internals import set_trial_attrs

    url, name = postgres_counted_study
    storage = optuna.storages.get_storage(url.replace("postgresql://", "postgresql+psycopg://", 1))
    study = optuna.create_study(study_name=name, storage=storage)
    trial = study.ask()
    commits = lambda: _commits(url)  # noqa: E731

    before = commits()
    set_trial_attrs(storage, trial_id(trial), {f"k{i}": i for i in range(6)}, {"draw_index": 2})
    # the write's own commit, plus the two reads of `commits` (stats are flushed as sessions commit: an upper bound)
    assert commits() - before <= 3
    assert study.trials[0].user_attrs == {f"k{i}": i for i in range(6)} and study.trials[0].system_attrs == {
        "draw_index": 2
    }


_SPACE = {
    "x": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
    "c": optuna.distributions.CategoricalDistribution(["a", "b", "c"]),
}


def _suggest_all(trial) -> dict:
    return {"x": trial.suggest_float("x", 1e-4, 1.0, log=True), "c": trial.suggest_categorical("c", ["a", "b", "c"])}


@pytest.mark.parametrize("kind", ["journal", "sqlite", "memory"])
def test_held_parameter_writes_go_out_with_the_trials_attrs_in_one_write(tmp_path, kind, monkeypatch):
    """`held_param_writes`: the trial sees its parameters as it suggests them, the storage sees none until the
    attrs write, which holds them all (one journal append of params + attrs); readers see what Optuna's own
    `suggest_*` would have written, and the trial finishes as usual."""
    from optuna.storages.journal import JournalFileBackend

    from sweeps.optuna_internals import held_param_writes, set_user_attrs, storage_of

    storage = dict(_storages(tmp_path))[kind]
    appends = []
    original = JournalFileBackend.append_logs
    monkeypatch.setattr(
        JournalFileBackend, "append_logs", lambda self, logs: appends.append(len(logs)) or original(self, logs)
    )
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    with held_param_writes(trial) as writes:
        params = _suggest_all(trial)
        assert trial.params == params and trial_record(trial).params == params
        if kind == "journal":  # not written yet (this process's replay may alias the trial's own copy)
            fresh = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "s.journal")))
            assert fresh.get_all_trials(study._study_id)[0].params == {}
        elif kind == "sqlite":
            assert all_trials(study)[0].params == {}
        before = len(appends)
        set_user_attrs(trial, {"status": "running"}, {"draw_index": 0}, writes)
        if kind == "journal":
            assert appends[before:] == [4]  # two parameters and two attrs, one append
    assert "set_trial_param" not in vars(storage_of(study))  # the storage's own method again
    frozen = all_trials(study)[0]
    assert frozen.params == params and frozen.distributions == _SPACE
    assert frozen.user_attrs == {"status": "running"} and frozen.system_attrs == {"draw_index": 0}
    study.tell(trial, 1.0)
    if kind == "journal":  # a fresh reader replays the same record
        fresh = optuna.load_study(study_name=study.study_name, storage=optuna.storages.JournalStorage(
            JournalFileBackend(str(tmp_path / "s.journal"))))  # fmt: skip
        assert fresh.trials[0].params == params and fresh.trials[0].value == 1.0


@pytest.mark.parametrize("kind", ["journal", "sqlite", "memory"])
def test_held_parameter_writes_are_written_when_the_block_ends_without_an_attrs_write(tmp_path, kind):
    from sweeps.optuna_internals import held_param_writes, storage_of

    storage = dict(_storages(tmp_path))[kind]
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    with pytest.raises(RuntimeError, match="in the block"), held_param_writes(trial):
        params = _suggest_all(trial)
        raise RuntimeError("in the block")  # its error is the one raised
    assert all_trials(study)[0].params == params and "set_trial_param" not in vars(storage_of(study))
    other = study.ask()  # another trial's writes are not held
    with held_param_writes(trial):
        assert other.suggest_float("x", 1e-4, 1.0, log=True) == all_trials(study)[1].params["x"]


@pytest.mark.parametrize("kind", ["journal", "sqlite", "memory"])
def test_the_attrs_that_end_a_trial_go_out_with_its_state(tmp_path, kind, monkeypatch):
    """`set_user_attrs_with_state`: the attrs and Optuna's finished state in one journal append or one RDB
    transaction (a reader sees both or neither); in memory written at once. The trial shows them at once."""
    from optuna.storages.journal import JournalFileBackend

    from sweeps.optuna_internals import set_user_attrs_with_state

    storage = dict(_storages(tmp_path))[kind]
    appends = []
    original = JournalFileBackend.append_logs
    monkeypatch.setattr(
        JournalFileBackend, "append_logs", lambda self, logs: appends.append(len(logs)) or original(self, logs)
    )
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    before = len(appends)
    set_user_attrs_with_state(trial, {"status": "completed", "epochs_run": 3}, {"k": 1})
    assert trial.user_attrs == {"status": "completed", "epochs_run": 3}
    if kind == "journal":
        fresh = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "s.journal")))
        assert fresh.get_all_trials(study._study_id)[0].user_attrs == {} and appends[before:] == []
    elif kind == "sqlite":
        assert all_trials(study)[0].user_attrs == {}
    else:
        assert all_trials(study)[0].user_attrs == {"status": "completed", "epochs_run": 3}
    study.tell(trial, 2.0)
    if kind == "journal":
        assert appends[before:] == [4]  # two user attrs, one system attr and the state
    frozen = all_trials(study)[0]
    assert frozen.state == TrialState.COMPLETE and frozen.value == 2.0
    assert frozen.user_attrs == {"status": "completed", "epochs_run": 3} and frozen.system_attrs == {"k": 1}
    other = study.ask()  # a trial without held attrs finishes as Optuna writes it
    study.tell(other, 3.0)
    assert all_trials(study)[1].user_attrs == {} and all_trials(study)[1].value == 3.0


def test_held_end_attrs_of_a_trial_another_worker_failed_are_refused_with_its_state_on_rdb(tmp_path):
    from optuna.exceptions import UpdateFinishedTrialError

    from sweeps.optuna_internals import set_user_attrs_with_state

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=optuna.storages.get_storage(url))
    trial = study.ask()
    assert optuna.storages.get_storage(url).set_trial_state_values(trial_id(trial), TrialState.FAIL)  # the reaper
    set_user_attrs_with_state(trial, {"status": "completed"})
    with pytest.raises(UpdateFinishedTrialError):  # what `tell` writes once it found the trial RUNNING
        study._storage.set_trial_state_values(trial_id(trial), TrialState.COMPLETE, [1.0])
    study.tell(study.ask(), 2.0)  # the next trial finishes as Optuna writes it
    trials = optuna.load_study(study_name=study.study_name, storage=url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE] and trials[0].user_attrs == {}


def test_held_end_attrs_of_a_trial_another_worker_failed_raise_once(tmp_path):
    """The trial was failed by another worker (a stale trial) between `tell`'s check and its write: the write
    raises as Optuna's does, once, and no entry is left to raise at a later, unrelated read."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages.journal import JournalFileBackend

    from sweeps.optuna_internals import set_user_attrs_with_state

    path = str(tmp_path / "s.journal")
    study = optuna.create_study(storage=optuna.storages.JournalStorage(JournalFileBackend(path)))
    trial = study.ask()
    reaper = optuna.storages.JournalStorage(JournalFileBackend(path))
    assert reaper.set_trial_state_values(trial_id(trial), TrialState.FAIL)
    set_user_attrs_with_state(trial, {"status": "completed"})
    with pytest.raises(UpdateFinishedTrialError):  # what `tell` writes once it found the trial RUNNING
        study._storage.set_trial_state_values(trial_id(trial), TrialState.COMPLETE, [1.0])
    study.tell(study.ask(), 2.0)  # nothing left over
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    fresh = optuna.storages.JournalStorage(JournalFileBackend(path)).get_all_trials(study._study_id)
    assert fresh[0].user_attrs == {} and fresh[0].state == TrialState.FAIL  # ignored with the state, as any reader does


def test_held_parameter_writes_and_attrs_are_one_postgres_transaction(postgres_counted_study):
    from sweeps.optuna_internals import held_param_writes, set_user_attrs, set_user_attrs_with_state

    url, name = postgres_counted_study
    storage = optuna.storages.get_storage(url.replace("postgresql://", "postgresql+psycopg://", 1))
    study = optuna.create_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    commits = lambda: _commits(url)  # noqa: E731

    before = commits()
    with held_param_writes(trial) as writes:
        params = _suggest_all(trial)
        set_user_attrs(trial, {"status": "running", "run_dir": "/r"}, {"draw_index": 0}, writes)
    # the write's own commit, plus the two reads of `commits` (without holding: one commit per parameter more)
    assert commits() - before <= 3
    assert study.trials[0].params == params and study.trials[0].user_attrs == {"status": "running", "run_dir": "/r"}
    set_user_attrs(trial, {"status": "completed", "epochs_run": 3})  # replaced and added in one upsert
    assert study.trials[0].user_attrs == {"status": "completed", "run_dir": "/r", "epochs_run": 3}
    before = commits()
    set_user_attrs_with_state(trial, {"status": "pruned", "reason": "r"})
    study.tell(trial, state=TrialState.PRUNED)  # the attrs in the state's own commit
    assert commits() - before <= 3
    assert study.trials[0].state == TrialState.PRUNED and study.trials[0].user_attrs["status"] == "pruned"


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=3),
        lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=3, multivariate=True),
        lambda seed: optuna.samplers.RandomSampler(seed=seed),
    ],
    ids=["tpe", "tpe-multivariate", "random"],
)
def test_a_reseeded_sampler_draws_what_a_new_one_with_that_seed_draws(make):
    """`reseed_sampler`: one sampler kept for a worker's life and reseeded per trial draws each trial's parameters
    exactly as a sampler made for that trial (`sweeps.samplers.TrialSeededSampler` relies on it)."""
    from sweeps.optuna_internals import reseed_sampler

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(8):
        t = study.ask()
        study.tell(t, _suggest_all(t)["x"])
    frozen = study._storage.get_trial(trial_id(study.ask()))

    def draw(sampler):
        sampler.before_trial(study, frozen)
        space = sampler.infer_relative_search_space(study, frozen)
        params = dict(sampler.sample_relative(study, frozen, space))
        return {
            **params,
            **{n: sampler.sample_independent(study, frozen, n, d) for n, d in _SPACE.items() if n not in params},
        }

    kept = make(0)
    first = draw(kept)
    for seed in (5, 6, 5):
        assert reseed_sampler(kept, seed)
        assert draw(kept) == draw(make(seed))
    assert reseed_sampler(kept, 0) and draw(kept) == first
    assert not reseed_sampler(optuna.samplers.CmaEsSampler(seed=0), 1)  # state of its own: made anew instead


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_worker_study_decides_takes_and_samples_a_trial_on_one_read(tmp_path, kind, monkeypatch):
    """`WorkerStudy.ask`: one read of the study serves `before_taking` (the worker's decision), the pop and the
    trial's samplers (`trials_read_in_trial`); a `before_taking` that raises takes no trial."""
    from sweeps.optuna_internals import covers, trials_read_in_trial

    storage = dict(_storages(tmp_path))[kind]
    optuna.create_study(study_name="w", storage=storage)
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=2)
    study = WorkerStudy(study_name="w", storage=storage, sampler=sampler, worker_attrs={"worker": {"pid": 7}})
    for _ in range(3):
        t = study.ask()
        study.tell(t, _suggest_all(t)["x"])
    seen, reads = [], []
    study.before_taking = lambda trials: seen.append([t.number for t in trials])
    read = type(storage).get_all_trials
    monkeypatch.setattr(
        type(storage), "get_all_trials", lambda self, *a, **k: reads.append(k.get("states")) or read(self, *a, **k)
    )
    trial = study.ask()
    _suggest_all(trial)  # TPE samples on the read ask() made (its constant liar reads the running trials itself)
    assert seen == [[0, 1, 2]] and [r for r in reads if r is None] == [None]
    assert [t.number for t in trials_read_in_trial(study)] == [0, 1, 2] and covers(trials_read_in_trial(study), 3)
    assert not covers(trials_read_in_trial(study), 4) and covers([], 0)

    class Stop(Exception):
        pass

    def refuse(trials):
        raise Stop

    study.before_taking = refuse
    with pytest.raises(Stop):
        study.ask()
    assert len(all_trials(study)) == 4


@pytest.mark.parametrize("kind", ["journal", "sqlite", "memory"])
def test_a_worker_study_records_its_worker_in_the_write_that_creates_the_trial(tmp_path, kind, monkeypatch):
    """No moment where a trial is RUNNING without its worker (the one recovery could never tell dead): a new trial
    is created with it; a popped WAITING trial gets it at once."""
    storage = dict(_storages(tmp_path))[kind]
    optuna.create_study(study_name="w", storage=storage)
    study = WorkerStudy(study_name="w", storage=storage, worker_attrs={"worker": {"pid": 7}})
    seen = []
    created = type(storage).create_new_trial
    monkeypatch.setattr(type(storage), "create_new_trial",
                        lambda self, study_id, template_trial=None: seen.append(template_trial) or created(self, study_id, template_trial))  # fmt: skip
    new = study.ask()
    assert seen[0].user_attrs == {"worker": {"pid": 7}} and seen[0].state == TrialState.RUNNING
    assert new.user_attrs == {"worker": {"pid": 7}} and study.trials[0].state == TrialState.RUNNING
    assert study.trials[0].datetime_start is not None
    study.enqueue_trial({"x": 1.0})
    popped = study.ask()
    assert popped.number == 1 and study.trials[1].user_attrs == {"worker": {"pid": 7}}
    assert study.trials[1].state == TrialState.RUNNING and popped.suggest_float("x", 0, 2) == 1.0
