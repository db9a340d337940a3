"""The few private names of Optuna the sweeps rely on, used from this module only (tests/sweeps/test_optuna_internals.py
and tests/sweeps/test_pruners.py pin the behaviour relied on, so an Optuna upgrade fails a test, not a study).

Each says why the public API does not do. Written against Optuna 5.1.
"""

from __future__ import annotations

import contextlib
import datetime
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from operator import attrgetter
from typing import Any, NamedTuple

import optuna
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import FrozenTrial, TrialState

NO_BRACKET = -1  # the bracket of a trial that belongs to none: no bracket's rungs count its values


def storage_of(study: optuna.Study) -> BaseStorage:
    """The study's storage. Optuna has no public accessor; the storage's own public methods are what fail another
    worker's trial (`set_trial_state_values`) and write the attrs of a trial that is not this process's `Trial`."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (`trial.number` counts within the study; the storage's methods take this id)."""
    return trial._trial_id


def trial_record(trial: optuna.Trial) -> FrozenTrial:
    """The record of a running `Trial` as it was taken: its system attrs and intermediate values as enqueued (a
    retry is enqueued with its killed attempts' epochs), which `optuna.Trial` does not expose. It is the copy the
    `Trial` read when it was made (`Trial._cached_frozen_trial`, kept up to date with the trial's own
    `set_user_attr` and params), so reading it costs no storage read (on RDB a transaction)."""
    return trial._cached_frozen_trial


# A parameter write as Optuna's `set_trial_param` takes it: (name, value in the internal representation, distribution).
ParamWrite = tuple[str, Any, BaseDistribution]


def set_trial_attrs(
    storage: BaseStorage,
    stored_id: int,
    user_attrs: Mapping[str, Any] = {},
    system_attrs: Mapping[str, Any] = {},
    params: Sequence[ParamWrite] = (),
) -> None:
    """Write several attrs of one trial, and any parameter writes held back (`held_param_writes`), in one storage
    write: one append to a journal (one lock and one fsync instead of one each) or one RDB transaction (one
    commit); other storages write them one by one. Parameters are written first, as `Trial.suggest_*` would have.

    Optuna's setters take one attr or parameter per call. The journal takes one per log entry (it asserts so), but
    its backend appends a list of entries at once (`append_logs`); RDB's setters are a transaction around
    `_set_trial_attr_without_commit` and `_set_trial_param_without_commit`.

    Raises:
        UpdateFinishedTrialError: the trial is finished (as Optuna's setters); on RDB nothing is written then, on
            a journal entries for a finished trial are ignored by every reader.
        ValueError: a parameter's distribution is incompatible with the one the study holds for its name.
    """
    items = [("user_attr", k, v) for k, v in user_attrs.items()] + [
        ("system_attr", k, v) for k, v in system_attrs.items()
    ]
    if not items and not params:
        return
    if isinstance(storage, JournalStorage):
        with storage._thread_lock:
            worker = storage._replay_result.worker_id
            entries = [
                {"op_code": JournalOperation.SET_TRIAL_PARAM, "worker_id": worker, "trial_id": stored_id,
                 "param_name": name, "param_value_internal": internal, "distribution": distribution_to_json(dist)}
                for name, internal, dist in params
            ]  # fmt: skip
            entries += _journal_entries(worker, stored_id, items)
            storage._backend.append_logs(entries)
            _sync_journal(storage)
        return
    backend = storage._backend if isinstance(storage, _CachedStorage) else storage
    if isinstance(backend, RDBStorage):
        _rdb_write(storage, backend, stored_id, params, items)
        return
    for name, internal, dist in params:
        type(storage).set_trial_param(storage, stored_id, name, internal, dist)  # the class's: not a held write
    for kind, k, v in items:
        setter = storage.set_trial_user_attr if kind == "user_attr" else storage.set_trial_system_attr
        setter(stored_id, k, v)


def _rdb_write(
    storage: BaseStorage, backend: RDBStorage, stored_id: int, params: Sequence[ParamWrite], items: list
) -> None:
    """`set_trial_attrs` on RDB: one transaction of four statements (the trial's state, its parameters, its user
    and its system attrs) where Optuna's setters run two or three per attr or parameter (~27 for a trial's start).

    As Optuna writes them: a parameter is checked against the study's distribution of its name (the one
    `_CachedStorage` keeps, else read by `_set_trial_param_without_commit`); attrs are upserted, one multi-row
    `INSERT .. ON CONFLICT (trial_id, key) DO UPDATE` per table on PostgreSQL and SQLite (Optuna's statement, with
    several rows), one by one elsewhere."""
    from optuna.distributions import check_distribution_compatibility
    from optuna.storages._rdb import models  # SQLAlchemy: imported only where a database is used
    from optuna.storages._rdb.storage import _create_scoped_session

    known: dict[str, BaseDistribution] | None = None  # the study's distributions, as _CachedStorage keeps them
    if isinstance(storage, _CachedStorage) and stored_id in storage._trial_id_to_study_id_and_number:
        known = storage._studies[storage._trial_id_to_study_id_and_number[stored_id][0]].param_distribution
    with _create_scoped_session(backend.scoped_session, True) as session:
        trial = models.TrialModel.find_or_raise_by_id(stored_id, session)
        backend.check_trial_is_updatable(stored_id, trial.state)
        for name, internal, dist in params:
            if known is None or name not in known:  # read and checked by Optuna's own
                backend._set_trial_param_without_commit(session, stored_id, name, internal, dist)
                continue
            check_distribution_compatibility(known[name], dist)
            row = models.TrialParamModel(
                trial_id=stored_id, param_name=name, param_value=internal, distribution_json=distribution_to_json(dist)
            )
            session.add(row)
        _upsert_attrs(session, backend, stored_id, items)
    if known is not None:
        for name, _, dist in params:
            known.setdefault(name, dist)


def _journal_entries(worker: str, stored_id: int, items: list) -> list[dict[str, Any]]:
    """Journal log entries of attrs [(kind, key, value)], one attr each (as Optuna's setters write them)."""
    op = {"user_attr": JournalOperation.SET_TRIAL_USER_ATTR, "system_attr": JournalOperation.SET_TRIAL_SYSTEM_ATTR}
    return [{"op_code": op[kind], "worker_id": worker, "trial_id": stored_id, kind: {k: v}} for kind, k, v in items]


def _upsert_attrs(session: Any, backend: RDBStorage, stored_id: int, items: list) -> None:
    """Upsert attrs [(kind, key, value)] of a trial in `session`: one multi-row `INSERT .. ON CONFLICT (trial_id, key)
    DO UPDATE` per table on PostgreSQL and SQLite (Optuna's own statement, with several rows), one by one
    (`_set_trial_attr_without_commit`) elsewhere. The caller has checked that the trial is updatable."""
    import json

    import sqlalchemy.dialects.postgresql
    import sqlalchemy.dialects.sqlite
    from optuna.storages._rdb import models

    dialect = {"postgresql": sqlalchemy.dialects.postgresql, "sqlite": sqlalchemy.dialects.sqlite}
    insert_into = getattr(dialect.get(backend.engine.name), "insert", None)
    for kind, model in (
        ("user_attr", models.TrialUserAttributeModel),
        ("system_attr", models.TrialSystemAttributeModel),
    ):
        attrs = [(k, v) for kd, k, v in items if kd == kind]
        if not attrs:
            continue
        if insert_into is None:
            for k, v in attrs:
                backend._set_trial_attr_without_commit(session, model, stored_id, k, v)
            continue
        insert = insert_into(model).values(
            [{"trial_id": stored_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs]
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[model.trial_id, model.key], set_={"value_json": insert.excluded.value_json}
        )
        session.execute(upsert)


class ParamWrites:
    """A trial's parameter writes held back by `held_param_writes`; `set_user_attrs` takes them out with its write."""

    def __init__(self) -> None:
        self.pending: list[ParamWrite] = []

    def take(self) -> list[ParamWrite]:
        taken, self.pending = self.pending, []
        return taken


@contextlib.contextmanager
def held_param_writes(trial: optuna.Trial) -> Iterator[ParamWrites]:
    """Within this block, `trial.suggest_*` samples, validates and caches each parameter as usual (the trial's
    `params` and its record show it at once), but its storage write is held back, to go out with the trial's next
    `set_user_attrs(..., params=writes)`: five parameters and the trial's start attrs in one journal append or
    one transaction instead of six. Writes still held when the block ends (an exception, no attrs written) are
    written then, one by one, so a trial never loses its parameters.

    Other workers see the parameters once they are written, as they would see them a little later anyway: a
    trial is known to be drawing (RUNNING, without all its parameters) until then (`sweeps.samplers.unsettled`).
    `Trial._suggest` calls `storage.set_trial_param` directly and Optuna has no way to batch it; the storage
    method is replaced on the storage object for the block (one trial at a time runs in a worker process).
    """
    storage = storage_of(trial.study)
    stored_id = trial_id(trial)
    write = type(storage).set_trial_param.__get__(storage)
    writes = ParamWrites()

    def hold(tid: int, name: str, internal: Any, distribution: BaseDistribution) -> None:
        if tid != stored_id:
            write(tid, name, internal, distribution)
        else:
            writes.pending.append((name, internal, distribution))

    storage.set_trial_param = hold
    try:
        yield writes
    finally:
        del storage.set_trial_param
        left = writes.take()
        if left:
            with contextlib.suppress(Exception):  # the block's own error, if any, is the one to see
                set_trial_attrs(storage, stored_id, params=left)


def _sync_journal(storage: JournalStorage) -> None:
    """Read this process's entries just appended. Each entry of a finished trial raises as it is read (after being
    counted), so the rest are read on, and the first error is raised once, not at the next unrelated read."""
    error = None
    while True:
        try:
            storage._sync_with_backend()
            break
        except UpdateFinishedTrialError as e:
            error = error or e
    if error is not None:
        raise error


def set_user_attrs(
    trial: optuna.Trial,
    user_attrs: Mapping[str, Any],
    system_attrs: Mapping[str, Any] = {},
    params: ParamWrites | None = None,
) -> None:
    """`Trial.set_user_attr` for several attrs at once, in one storage write (`set_trial_attrs`) with the parameter
    writes `params` holds back (`held_param_writes`); the trial's `user_attrs` (and its record, `trial_record`)
    show them at once, as after `set_user_attr`."""
    held = list(params.pending) if params is not None else []
    set_trial_attrs(storage_of(trial.study), trial_id(trial), user_attrs, system_attrs, held)
    if params is not None:
        del params.pending[: len(held)]  # written: not again when its block ends
    trial._cached_frozen_trial.user_attrs.update(user_attrs)
    trial._cached_frozen_trial.system_attrs.update(system_attrs)


def set_user_attrs_with_state(
    trial: optuna.Trial, user_attrs: Mapping[str, Any], system_attrs: Mapping[str, Any] = {}
) -> None:
    """`set_user_attrs` for the attrs that end a trial, written with the trial's finished state, which Optuna's
    `tell` writes next: on a journal in the same append, on RDB in the same transaction (one write instead of two,
    and no reader ever sees the trial finished without them, or them on a trial still RUNNING). On other storages
    they are written now. The trial's `user_attrs` show them at once either way.

    A process that dies before the `tell` loses both, and the trial is found stale (`sweeps.recovery`) as it
    would be had it died during training. The storage object's writer of the state is wrapped once: the journal's
    `_write_log` (`_journal_with_held`), RDB's `set_trial_state_values` (`_rdb_with_held`, Optuna's transaction
    with the attrs' upserts added).
    """
    storage = storage_of(trial.study)
    backend = storage._backend if isinstance(storage, _CachedStorage) else storage
    if isinstance(storage, JournalStorage):
        if "_write_log" not in vars(storage):
            storage._write_log = _journal_with_held(storage)
    elif isinstance(backend, RDBStorage):
        if "set_trial_state_values" not in vars(backend):
            backend.set_trial_state_values = _rdb_with_held(backend)
    else:
        set_user_attrs(trial, user_attrs, system_attrs)
        return
    items = [("user_attr", k, v) for k, v in user_attrs.items()] + [
        ("system_attr", k, v) for k, v in system_attrs.items()
    ]
    _HELD_ATTRS[backend] = {trial_id(trial): items}  # one trial at a time: a trial never told leaves nothing
    trial._cached_frozen_trial.user_attrs.update(user_attrs)
    trial._cached_frozen_trial.system_attrs.update(system_attrs)


# journal or RDB storage -> trial id -> the attrs [(kind, key, value)] that go out with the trial's finished state
_HELD_ATTRS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _held(storage: BaseStorage, stored_id: int, state: TrialState) -> list | None:
    return _HELD_ATTRS.get(storage, {}).pop(stored_id, None) if state.is_finished() else None


def _journal_with_held(storage: JournalStorage) -> Any:
    write = type(storage)._write_log.__get__(storage)

    def write_log(op_code: int, extra_fields: dict[str, Any]) -> None:
        held = None
        if op_code == JournalOperation.SET_TRIAL_STATE_VALUES:
            held = _held(storage, extra_fields["trial_id"], TrialState(extra_fields["state"]))
        if not held:
            write(op_code, extra_fields)
            return
        worker, stored_id = storage._replay_result.worker_id, extra_fields["trial_id"]
        entries = _journal_entries(worker, stored_id, held)
        storage._backend.append_logs([*entries, {"op_code": op_code, "worker_id": worker, **extra_fields}])
        _sync_journal(storage)  # all of them read now (a finished trial's raise once), not at a later read

    return write_log


def _rdb_with_held(backend: RDBStorage) -> Any:
    set_state = type(backend).set_trial_state_values.__get__(backend)

    def set_trial_state_values(stored_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        held = _held(backend, stored_id, state)
        if not held:
            return set_state(stored_id, state, values)
        import sqlalchemy.exc
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        try:  # Optuna's RDBStorage.set_trial_state_values for a finished state, with the attrs' upserts
            with _create_scoped_session(backend.scoped_session) as session:
                trial = models.TrialModel.find_or_raise_by_id(stored_id, session, for_update=True)
                backend.check_trial_is_updatable(stored_id, trial.state)
                _upsert_attrs(session, backend, stored_id, held)
                for objective, v in enumerate(values or ()):
                    backend._set_trial_value_without_commit(session, trial, objective, v)
                trial.state = state
                trial.datetime_complete = datetime.datetime.now()
        except sqlalchemy.exc.IntegrityError:
            return False
        return True

    return set_trial_state_values


def all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial of the study, read from the storage: Hyperband hands samplers and pruners a view of one bracket
    (`optuna.pruners._filter_study`) whose public `get_trials` leaves the other brackets' trials out."""
    return storage_of(study).get_all_trials(study._study_id, deepcopy=False)


def trials_read_in_trial(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial of the study, from the one read Optuna's samplers share within a trial: the list
    `Study._get_trials(use_cache=True)` reads at its first use after `ask()` (which empties it), or, for a
    `WorkerStudy`, the read `ask()` made before taking the trial. TPE reads it too, so a sampler or an objective
    reading it costs no storage read of its own (on RDB a transaction each). A `WorkerStudy`'s read may lack the
    trial being run and trials other workers created just before it (`covers`). Not for reads that must see what
    other workers did since (a trial finished, a trial created): those read the storage. Also on Hyperband's
    bracket view, whose `_get_trials` is the whole study's (only its `get_trials` is one bracket's)."""
    return study._get_trials(deepcopy=False, use_cache=True)


class ReadSplit(NamedTuple):
    unfinished: list[FrozenTrial]  # the trials not finished (WAITING, RUNNING), in number order
    states: Counter  # TrialState -> how many trials of the read are in it


FINISHED_STATES = frozenset((TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
_LAST_SPLIT: list[tuple[Sequence[FrozenTrial], int, ReadSplit]] = []


def split_read(trials: Sequence[FrozenTrial]) -> ReadSplit:
    """The unfinished trials of a read of the study and its count of trials by state, computed once per read (the
    last one is kept): a worker's checks of one trial (its decision, the queue, the repeat checks, its place) look
    at the one read `ask()` took, and each pass over a 2,000-trial study costs ~0.1 ms. A read is a list no one
    changes; its length is checked too."""
    if _LAST_SPLIT and _LAST_SPLIT[0][0] is trials and _LAST_SPLIT[0][1] == len(trials):
        return _LAST_SPLIT[0][2]
    split = ReadSplit([t for t in trials if t.state not in FINISHED_STATES], Counter(map(attrgetter("state"), trials)))
    _LAST_SPLIT[:] = [(trials, len(trials), split)]
    return split


def covers(trials: list[FrozenTrial], number: int) -> bool:
    """Whether `trials` (a study's, in number order) holds every trial numbered below `number`."""
    return len(trials) >= number and (number == 0 or trials[number - 1].number == number - 1)


def study_key(study: optuna.Study) -> tuple[str, int]:
    """(name, storage id) of a study: a study deleted and created again under its name is another study to a cache
    of its trials; only the storage's id tells them apart, and `Study` does not expose it."""
    return study.study_name, study._study_id


def reseed_sampler(sampler: optuna.samplers.BaseSampler, seed: int | None) -> bool:
    """Give a TPE or random sampler the random state a new one made with `seed` would have (None: fresh entropy),
    so that one sampler serves every trial of a worker: constructing a TPESampler costs ~0.5 ms a trial, reseeding
    its two `RandomState`s a few microseconds. False (nothing changed) for other samplers: GP keeps fitted kernels
    and CMA-ES its search space between calls, which a fresh sampler would not have.

    Optuna's `reseed_rng` draws a fresh seed and offers no way to choose one; TPE's `_rng` and its random
    sampler's `_rng` (both `LazyRandomState`) are all the randomness either holds, and TPE's only other state
    (its cached search space) is not read when the search space is passed to `sample_relative`.
    """
    if type(sampler) is optuna.samplers.TPESampler:
        rngs = [sampler._rng, sampler._random_sampler._rng]
    elif type(sampler) is optuna.samplers.RandomSampler:
        rngs = [sampler._rng]
    else:
        return False
    for rng in rngs:
        rng.rng.seed(seed)
    return True


class WorkerStudy(optuna.Study):
    """An `optuna.Study` whose `ask()` calls `before_reading`, reads the study once, hands that read to
    `before_taking` (either may raise to take no trial: the worker's decision to run, wait or stop), pops a WAITING trial from it or calls
    `nothing_waiting()` before it would create a new one, and writes `worker_attrs` (the worker taking the trial)
    as it takes a trial.

    A new trial is created with the attrs (`create_new_trial`'s template: one write, so no trial is ever RUNNING
    without its worker); a WAITING trial gets them right after it is popped. `Study.ask` offers no public hook
    between popping the queue (`_pop_waiting_trial_id`) and creating a trial, and checking the queue before `ask`
    races with other workers popping it. The read is also the trial's shared read (`trials_read_in_trial`, which
    `ask` empties just before): the decision, the pop and the samplers cost one storage read (on RDB ~6 queries),
    where they cost three.
    """

    def __init__(self, *args: Any, worker_attrs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker_attrs = dict(worker_attrs or {})

    def _pop_waiting_trial_id(self) -> int | None:
        self.before_reading()
        trials = self._storage.get_all_trials(self._study_id, deepcopy=False)
        self.before_taking(trials)
        self._thread_local.cached_all_trials = trials
        for t in [t for t in split_read(trials).unfinished if t.state is TrialState.WAITING]:  # as Study's, on this read
            try:
                if not self._storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    continue  # another worker took it first
            except UpdateFinishedTrialError:
                continue
            set_trial_attrs(self._storage, t._trial_id, self.worker_attrs)
            return t._trial_id
        self.nothing_waiting()
        if not self.worker_attrs:
            return None  # ask() creates the trial
        template = FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.datetime.now(),
            datetime_complete=None, params={}, distributions={}, user_attrs=dict(self.worker_attrs),
            system_attrs={}, intermediate_values={}, trial_id=-1,
        )  # fmt: skip
        return self._storage.create_new_trial(self._study_id, template_trial=template)

    def before_reading(self) -> None:
        """Called by `ask()` first, before it reads the study; raise to take no trial."""

    def before_taking(self, trials: list[FrozenTrial]) -> None:
        """Called by `ask()` with every trial of the study as just read, before a trial is taken; raise to take
        none."""

    def nothing_waiting(self) -> None:
        """Called when the queue is empty; raise to keep `ask()` from creating a trial."""


class BracketedHyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband whose bracket of a trial is chosen by `bracket_trial`: the trial Optuna places (its
    bracket is a function of the study name and the trial number), or None for no bracket (`NO_BRACKET`).
    Hyperband and its TPE sampler both call `_get_bracket_id`; there is no public way to choose the bracket."""

    def _get_bracket_id(self, study: optuna.Study, trial: FrozenTrial) -> int:
        placed = self.bracket_trial(study, trial)
        return NO_BRACKET if placed is None else super()._get_bracket_id(study, placed)

    def bracket_trial(self, study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
        return trial
