"""Samplers of a study that must stay true under many workers and restarts: no cell lost, no point repeated.

Two kinds of study, chosen by `sweep.sampler.name`:

- **Cell studies** (`grid`, and rpb-ablate's explicit cell lists): the cells are enqueued once, as WAITING trials,
  when the study is created. Every worker on every machine pops them from the storage, one process per cell (the
  WAITING -> RUNNING transition is atomic in Optuna's storages), and a killed cell's retry is a WAITING copy of the
  same cell. Workers never create a trial of their own (`CellStudy`), so a cell can neither be lost nor run twice.
  Optuna's own `GridSampler` is not used: it maps a trial to a grid cell through a shuffle seeded per process, so
  workers with different seeds (and, in Optuna's words, "duplicated suggestions" under parallel workers) disagree
  on which cell a `grid_id` is, and it counts failed cells as visited.
- **Searched studies** (`tpe`, `random`, `gp`, `cmaes`): `TrialSeededSampler` gives every trial a sampler of its
  own, seeded from (`sweep.sampler.seed`, draw index), that draws the whole parameter set at once and draws again
  (a new seed) while the set is one the study already holds. The draw index is the trial number less the retries
  before it (`draw_index`): a retry of a killed or interrupted trial takes a trial number but draws nothing, so
  the trials after it draw what they would have drawn without the interruption.

Reproducibility, as far as Optuna allows it:
- The same seed, the same space and one worker give the same sequence of parameter sets, whether the study runs in
  one command or is stopped and continued, between trials or in the middle of one (the k-th drawn trial's sampler
  depends only on the seed, k and the finished trials before it, where a retry finishes as its original would;
  no state carries from one trial's draw to the next: the TPE or random sampler a worker keeps is reseeded to the
  state a new one would have). This holds for TPE, random, GP and CMA-ES (CMA-ES keeps its
  state in the trials' system attrs, as Optuna stores it).
- A grid runs its cells in an order fixed by the seed (unshuffled without one).
- With several workers the set of trials each one sees depends on timing, so the sequence is not reproducible
  (Optuna's FAQ says the same of parallel optimisation); no point is repeated all the same, except that two
  workers sampling a small finite space at the same instant may draw the same set: the later trial is then failed
  as a duplicate before it trains (`sweeps.objective`), never trained twice.
- Pruning decisions depend on what finished first, so pruned trials differ between parallel runs.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from sweeps.optuna_internals import (
    FINISHED_STATES,
    WorkerStudy,
    all_trials,
    covers,
    reseed_sampler,
    split_read,
    storage_of,
    study_key,
    trials_read_in_trial,
)
from sweeps.record import DUPLICATE, RETRY, SystemAttr, TrialAttr, trial_origin
from sweeps.space import Dimension

log = logging.getLogger(__name__)
SamplerFactory = Callable[[int | None], BaseSampler]
# Above this many points a finite space is not enumerated to find the points it has left.
_MAX_ENUMERATED = 100_000


class NothingQueued(Exception):
    """A cell study has no WAITING trial left for this worker (raised instead of creating a stray trial)."""


class CellStudy(WorkerStudy):
    """A study whose workers only run enqueued trials: `ask()` pops a WAITING trial or raises `NothingQueued`.

    `Study.optimize` asks for a trial, and `Study.ask` creates a new one when the queue is empty; with several
    workers popping the last cells at once, the loser would create a trial outside the grid. Here it gets
    `NothingQueued` instead, before any trial exists.
    """

    def nothing_waiting(self) -> None:
        raise NothingQueued(self.study_name)


def params_key(params: dict[str, Any], names: Iterable[str]) -> tuple:
    """A hashable key of a parameter set over `names` (repr keeps 3 and 3.0, "3x3" and [3, 3] apart)."""
    return tuple((name, repr(params.get(name))) for name in names)


# Recorded before the trial trains (`sweeps.objective`) where it differs from the trial's number (a retry before
# it), else counted by its readers (`draw_index`: a trial's never changes once it exists); a retry carries its
# original's.
DRAW_ATTR = SystemAttr.DRAW_INDEX


def draw_index(study: Study, trial: FrozenTrial, trials: Sequence[FrozenTrial] | None = None) -> int:
    """The place of `trial` in the study's sequence of draws: its number less the retries numbered before it.

    Enqueued trials (the defaults, grid cells) keep their place: they are part of the plan whatever happens. A
    retry exists only because a trial was killed or stopped, so it takes no place; without this, a study stopped
    in the middle of trial k and continued would seed every later trial one number off and draw other points.
    `trials`: every trial of the study, where the caller has just read them (else read here).
    """
    if trials is None:
        trials = all_trials(study)  # not study.get_trials: a sampler or pruner may be handed one bracket's view
    seen = _RETRIES.setdefault(storage_of(study), {}).setdefault(study_key(study), [0, []])
    for t in trials[seen[0] :]:  # trials come in number order, and a retry is one from its creation on
        if trial_origin(t.system_attrs) == RETRY:
            seen[1].append(t.number)
    seen[0] = max(seen[0], len(trials))
    return trial.number - bisect.bisect_left(seen[1], trial.number)


# storage -> study -> [trials read, the numbers of the retries among them]: `draw_index` reads each trial once
_RETRIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def trial_seed(seed: int | None, number: int, attempt: int = 0) -> int | None:
    """The seed of trial `number`'s sampler (None: not reproducible), independent of which worker runs it.

    numpy's SeedSequence mixes (seed, number, attempt) into well-separated streams.
    """
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, number, attempt]).generate_state(1)[0])


def space_size(dims: Sequence[Dimension]) -> int | None:
    """Points in a finite space (categoricals, ints, stepped floats); None when a dimension is continuous."""
    size = 1
    for dim in dims:
        n = dim.size()
        if n is None:
            return None
        size *= n
    return size


def space_points(dims: Sequence[Dimension]) -> Iterable[dict[str, Any]]:
    """Every point of a finite space, in a fixed order."""
    return (dict(zip([d.path for d in dims], values)) for values in itertools.product(*(d.values() for d in dims)))


def held_params(
    study: Study,
    names: Sequence[str],
    *,
    exclude: int | None = None,
    before: int | None = None,
    trials: Sequence[FrozenTrial] | None = None,
) -> dict[tuple, int]:
    """The parameter sets the study holds (key -> the lowest trial number holding it): every trial, any state,
    with all of `names` set or fixed, except trials failed as duplicates, trial `exclude`, and (given `before`)
    trials numbered `before` or higher. `trials`: every trial of the study, where the caller has just read them
    (else read here: one read, on RDB one query)."""
    if trials is None:
        trials = all_trials(study)  # not study.get_trials: a sampler may be handed one bracket's view (Hyperband)
    unfinished = split_read(trials).unfinished
    held = _finished_held(study, names, trials, len(trials) - len(unfinished))
    lowest = held.lowest
    if exclude is not None and lowest.get(held.keys.get(exclude, None)) == exclude:
        return _held_params_scan(study, names, exclude=exclude, before=before)  # its key's next holder is needed
    out = dict(lowest) if before is None else {key: n for key, n in lowest.items() if n < before}
    for t in unfinished:
        n = t.number
        if n == exclude or (before is not None and n >= before):
            continue
        key = _held_key(t, names)
        if key is not None and n < out.get(key, n + 1):
            out[key] = n
    return out


def held_by(
    study: Study, names: Sequence[str], params: dict[str, Any], *, before: int, trials: Sequence[FrozenTrial]
) -> int | None:
    """The lowest trial numbered below `before` that holds `params` over `names` (None: none does), as
    `held_params(..., before=before)` would tell, without building the whole map: the finished holders are
    looked up in the study's incremental sets, the unfinished trials scanned. `trials`: every trial of the study."""
    key = params_key(params, names)
    unfinished = split_read(trials).unfinished
    lowest = _finished_held(study, names, trials, len(trials) - len(unfinished)).lowest.get(key)
    holder = lowest if lowest is not None and lowest < before else None
    for t in unfinished:
        n = t.number
        if n >= before or (holder is not None and n >= holder):
            continue
        if _held_key(t, names) == key:
            holder = n
    return holder


class _Held:
    """The keys of a study's finished trials (whose params and status never change), read once each."""

    def __init__(self) -> None:
        self.keys: dict[int, tuple | None] = {}  # trial number -> its params key (None: holds none)
        self.lowest: dict[tuple, int] = {}  # params key -> the lowest finished trial number holding it


# storage -> (study, names) -> _Held, so that the sets a study holds are read incrementally (`held_params` runs
# twice a trial; without this its cost grows with the study: ~6 us a trial already in it, `sweeps.bench_overhead`).
_HELD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _finished_held(study: Study, names: Sequence[str], trials: Sequence[FrozenTrial], finished: int) -> _Held:
    """The study's `_Held`, brought up to date with `trials` (its trials, in number order, `finished` of them
    finished)."""
    held = _HELD.setdefault(storage_of(study), {}).setdefault((*study_key(study), tuple(names)), _Held())
    if finished != len(held.keys):
        for t in reversed(trials):  # the newly finished trials are mostly the last numbers
            n = t.number
            if n in held.keys or t.state not in FINISHED_STATES:
                continue
            key = held.keys[n] = _held_key(t, names)
            if key is not None and n < held.lowest.get(key, n + 1):
                held.lowest[key] = n
            if len(held.keys) == finished:
                break
    return held


def _held_params_scan(
    study: Study, names: Sequence[str], *, exclude: int | None = None, before: int | None = None
) -> dict[tuple, int]:
    """`held_params` read from every trial (the rare case of an excluded finished trial that holds its key)."""
    held: dict[tuple, int] = {}
    for t in all_trials(study):
        n = t.number
        if n == exclude or (before is not None and n >= before):
            continue
        key = _held_key(t, names)
        if key is not None:
            held.setdefault(key, n)
    return held


def unsettled(trials: Sequence[FrozenTrial], names: Sequence[str], before: int) -> bool:
    """Whether some unfinished trial numbered below `before` had not all of `names` set when `trials` was read
    (a trial of another worker still drawing its parameters): only such a trial can still come to hold the set
    the trial `before` drew, so the refusal of repeats reads the study again only then."""
    return any(
        t.number < before and _held_key(t, names) is None and t.user_attrs.get(TrialAttr.STATUS) != DUPLICATE
        for t in split_read(trials).unfinished
    )


def _held_key(t: FrozenTrial, names: Sequence[str]) -> tuple | None:
    """The params key a trial holds (None: a refused duplicate, or a trial without all of `names`)."""
    if t.user_attrs.get(TrialAttr.STATUS) == DUPLICATE:
        return None
    params = {**t.params, **t.system_attrs.get(SystemAttr.FIXED_PARAMS, {})}
    return params_key(params, names) if all(name in params for name in names) else None


def exhausted(study: Study, dims: Sequence[Dimension], trials: Sequence[FrozenTrial] | None = None) -> bool:
    """True when a finite space has no point the study does not already hold (`trials`: every trial of the study,
    where the caller has just read them)."""
    size = space_size(dims)
    return size is not None and len(held_params(study, [d.path for d in dims], trials=trials)) >= size


class TrialSeededSampler(BaseSampler):
    """A sampler per trial, seeded from (seed, `draw_index`), that never proposes a parameter set already held.

    Args:
        factory: `factory(seed) -> sampler`: TPE, random, GP or CMA-ES as configured (`sweeps.config`).
        dims: the search space; the whole set is drawn in `sample_relative` (one draw, then checked).
        seed: `sweep.sampler.seed` (None: fresh randomness in every trial).
        max_attempts: draws before falling back to the points the study does not hold (finite spaces) or to
            random sampling (continuous ones, where a repeat is then all but impossible).

    Trials that already carry parameters (enqueued trials, retries of killed ones) are left as they are: their
    repeats are asked for.
    """

    def __init__(self, factory: SamplerFactory, dims: Sequence[Dimension], seed: int | None, max_attempts: int = 16):
        self._factory, self._seed, self._max_attempts = factory, seed, max_attempts
        self._dims = list(dims)
        self._names = [d.path for d in self._dims]
        self._space: dict[str, BaseDistribution] = {d.path: d.distribution() for d in self._dims}
        self._inner: dict[int, BaseSampler] = {}
        # The relative search space is inferred by one sampler kept for the worker's life: Optuna's samplers cache
        # the space they infer (IntersectionSearchSpace reads only the trials finished since the last call), which a
        # sampler made for one trial recomputes from every trial of the study (~24 ms at 2,000 trials). The space
        # does not depend on the seed, so each trial's own seeded sampler draws in it.
        self._space_sampler: BaseSampler | None = None
        # The sampler that draws: one for the worker's life where it can be reseeded to the state a new one with
        # the trial's seed would have (TPE, random: `reseed_sampler`), else a new one per draw.
        self._drawer: BaseSampler | None = None

    def reseed_rng(self) -> None:  # the seeds come from the draw indices
        pass

    @staticmethod
    def _draw_index(study: Study, trial: FrozenTrial, trials: Sequence[FrozenTrial] | None = None) -> int:
        """The trial's `draw_index`: its recorded one (a retry carries its original's), else counted."""
        recorded = trial.system_attrs.get(DRAW_ATTR)
        return int(recorded) if recorded is not None else draw_index(study, trial, trials)

    @staticmethod
    def _preset(trial: FrozenTrial) -> bool:
        return bool(trial.params) or SystemAttr.FIXED_PARAMS in trial.system_attrs

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {} if self._preset(trial) else dict(self._space)

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]):
        if not search_space:
            return {}
        trials = trials_read_in_trial(study)  # the trial's one read, which TPE reads too: every trial, any bracket
        if not covers(trials, trial.number):  # read before other workers created trials numbered below this one
            trials = all_trials(study)
        held = set(held_params(study, self._names, exclude=trial.number, trials=trials))  # later ones: other workers'
        index = self._draw_index(study, trial, trials)
        if self._space_sampler is None:
            self._space_sampler = self._factory(self._seed)
        relative = self._space_sampler.infer_relative_search_space(study, trial)
        relative = {name: dist for name, dist in relative.items() if name in self._space}
        for attempt in range(self._max_attempts):
            inner = self._seeded(trial_seed(self._seed, index, attempt))
            params = self._draw(inner, study, trial, relative)
            if params_key(params, self._names) not in held:
                self._inner[trial.number] = inner
                return params
        return self._fallback(study, trial, held, index)

    def _seeded(self, seed: int | None) -> BaseSampler:
        """A sampler that draws as `factory(seed)` would: the worker's one, reseeded, where it can be."""
        if self._drawer is not None and reseed_sampler(self._drawer, seed):
            return self._drawer
        inner = self._factory(seed)
        self._drawer = inner if reseed_sampler(inner, seed) else None  # reseeding a new one changes nothing
        return inner

    def _draw(
        self, inner: BaseSampler, study: Study, trial: FrozenTrial, relative: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """The inner sampler's full parameter set: its params in the `relative` space, then each remaining one
        independently."""
        inner.before_trial(study, trial)
        params = dict(inner.sample_relative(study, trial, relative)) if relative else {}
        for name, dist in self._space.items():
            if name not in params:
                params[name] = inner.sample_independent(study, trial, name, dist)
        return params

    def _fallback(self, study: Study, trial: FrozenTrial, held: set[tuple], index: int) -> dict[str, Any]:
        size = space_size(self._dims)
        rng = np.random.default_rng(trial_seed(self._seed, index, self._max_attempts))
        if size is not None and size <= _MAX_ENUMERATED:
            free = [p for p in space_points(self._dims) if params_key(p, self._names) not in held]
            if free:
                return free[int(rng.integers(len(free)))]
            log.warning("trial %d: every point of the search space is in the study already", trial.number)
        random = optuna.samplers.RandomSampler(seed=int(rng.integers(2**31)))
        for _ in range(self._max_attempts):
            params = self._draw(random, study, trial, {})
            if params_key(params, self._names) not in held:
                break
        self._inner[trial.number] = random
        return params

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str, param_distribution):
        # Only for parameters outside the configured space (none in rpb-sweep): one seeded random draw.
        seed = trial_seed(self._seed, self._draw_index(study, trial), self._max_attempts + 1)
        return optuna.samplers.RandomSampler(seed=seed).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None):
        inner = self._inner.pop(trial.number, None)
        if inner is not None:
            inner.after_trial(study, trial, state, values)


def cell_order(cells: list[dict[str, Any]], seed: int | None) -> list[int]:
    """The order in which a cell study runs its cells: shuffled by `seed` (as GridSampler does), else as listed."""
    order = list(range(len(cells)))
    if seed is not None:
        np.random.default_rng(int(seed) & 0xFFFFFFFF).shuffle(order)
    return order
