"""Read a study and its results: the Optuna storage, and one result per trial cell, each with its run.

What one run is and how it is read lives in `dashboards.runs` (`RunData`, `LocalRunReader`; the W&B reader in
`dashboards.wandb_reader`); what makes two trials one result in `dashboards.cells`. Both are handed on here, so a
caller loads a study and reads its runs from this one module.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from dashboards.cells import Cell, default_cell, retried_from
from dashboards.runs import LocalRunReader, RunData, RunReader, read_run_dir

__all__ = [
    "Cell",
    "LocalRunReader",
    "Results",
    "RunData",
    "RunReader",
    "load_study",
    "open_storage",
    "read_run_dir",
    "results",
    "retried_from",
    "trial_counts",
    "trial_runs",
]


def open_storage(storage: str) -> str | optuna.storages.BaseStorage:
    """Open a study storage given as a SQLAlchemy URL (``sqlite:///x.db``, ``postgresql://...``) or a journal file.

    Raises:
        ValueError: when a journal file path does not exist.
    """
    if "://" in storage:
        return storage
    path = Path(storage)
    if not path.is_file():
        raise ValueError(
            f"--storage {storage!r} is neither a database URL nor an existing Optuna journal file; "
            "pass the journal file the sweep wrote (runs/sweeps/<study_name>.journal) or a URL such as sqlite:///x.db."
        )
    # An open-lock backend works on every filesystem; reading takes no lock at all.
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def load_study(storage: str, study_name: str | None = None) -> optuna.Study:
    """Load a study; the study name may be left out when the storage holds exactly one.

    Raises:
        ValueError: when the name is missing and the storage holds several studies (or none), or is unknown.
    """
    opened = open_storage(storage)
    names = optuna.get_all_study_names(opened)
    if study_name is None:
        if len(names) != 1:
            raise ValueError(f"--study is required: the storage holds {len(names)} studies ({', '.join(names)}).")
        study_name = names[0]
    elif study_name not in names:
        raise ValueError(f"--study {study_name!r} is not in the storage; it holds: {', '.join(names) or 'none'}.")
    return optuna.load_study(study_name=study_name, storage=opened)


# --- One trial, one result -------------------------------------------------------------------------------------

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
RESULT_STATES = (COMPLETE, PRUNED)


@dataclass
class Results:
    """The results of a study, one per trial cell (see `results`), and what was left out and why.

    Attributes:
        complete: (trial, run) of the COMPLETE trial kept for each cell, in trial order; `run` is None when the
            run could not be read. The only trials that are ranked or enter means and intervals.
        pruned: (trial, run) of the PRUNED trial kept for each cell that has no complete trial, in trial order:
            stopped early, shown apart, never ranked or averaged with the complete ones.
        duplicates: (trial, kept) for each COMPLETE or PRUNED trial whose cell already has a result: `trial` is
            not counted, `kept` is the trial that holds the cell.
        attempts: the FAIL trials (killed, interrupted, failed, duplicate, ...): never results.
        counts: the study's trials by state (lower-case `TrialState` names, every state present), as stored.
    """

    complete: list[tuple[optuna.trial.FrozenTrial, RunData | None]] = field(default_factory=list)
    pruned: list[tuple[optuna.trial.FrozenTrial, RunData | None]] = field(default_factory=list)
    duplicates: list[tuple[optuna.trial.FrozenTrial, optuna.trial.FrozenTrial]] = field(default_factory=list)
    attempts: list[optuna.trial.FrozenTrial] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def runs(self, kind: str = "complete") -> list[tuple[optuna.trial.FrozenTrial, RunData]]:
        """The kept results of `kind` ("complete" or "pruned") whose run could be read."""
        return [(t, r) for t, r in getattr(self, kind) if r is not None]

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        """Every kept result (complete and pruned), in trial order."""
        return sorted((t for t, _ in (*self.complete, *self.pruned)), key=lambda t: t.number)


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """The study's trials counted by state: {"running", "complete", "pruned", "fail", "waiting"} -> count."""
    counts = {state.name.lower(): 0 for state in optuna.trial.TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] += 1
    return counts


def results(study: optuna.Study, reader: RunReader, cell: Cell | None = None) -> Results:
    """One trial, one result: what every summary, table, plot and count of the dashboards reads.

    The rule:

    * A result is a trial in state COMPLETE (ranked, enters means and intervals) or PRUNED (stopped early: shown
      apart, never ranked among or averaged with complete ones).
    * A FAIL trial is never a result, whatever its ``user_attrs["status"]`` (stale, interrupted, failed,
      duplicate, ...): a killed attempt and its retry are one trial, and the retry is the result. FAIL trials are
      listed in `Results.attempts` (to be counted, never plotted or averaged). RUNNING and WAITING trials are not
      results either.
    * One result per cell (`cell(trial, run)`; by default `dashboards.cells.default_cell`: the params, for an ablation the
      setting and seed). When several COMPLETE trials hold a cell, the cell counts once: the end of a retry
      chain wins over the attempts it retries, otherwise the earliest-numbered one; a PRUNED trial is a result
      only for a cell with no COMPLETE one. The others are in `Results.duplicates`, for the page to say so.

    Only COMPLETE and PRUNED trials are read; a result whose run cannot be read keeps `run=None`.
    """
    cell = cell or default_cell(study)
    trials = study.get_trials(deepcopy=False)
    out = Results(counts=trial_counts(study))
    read: dict[int, RunData | None] = {}
    cells: dict[Hashable, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        if trial.state == optuna.trial.TrialState.FAIL:
            out.attempts.append(trial)
        if trial.state not in RESULT_STATES:
            continue
        read[trial.number] = run = reader.read(trial)
        if run is not None and trial.datetime_start is not None and trial.datetime_complete is not None:
            run.study_wall_s = (trial.datetime_complete - trial.datetime_start).total_seconds()
        cells.setdefault(cell(trial, run), []).append(trial)
    kept: list[optuna.trial.FrozenTrial] = []
    for members in cells.values():
        state = COMPLETE if any(t.state == COMPLETE for t in members) else PRUNED
        candidates = [t for t in members if t.state == state]
        superseded = {n for t in candidates for n in retried_from(t)}
        keep = min((t for t in candidates if t.number not in superseded), key=lambda t: t.number, default=None)
        keep = keep or max(candidates, key=lambda t: t.number)  # a retry cycle cannot happen; be safe anyway
        kept.append(keep)
        out.duplicates += [(t, keep) for t in members if t is not keep]
    for trial in sorted(kept, key=lambda t: t.number):
        (out.complete if trial.state == COMPLETE else out.pruned).append((trial, read[trial.number]))
    out.duplicates.sort(key=lambda pair: pair[0].number)
    return out


def trial_runs(
    study: optuna.Study, reader: RunReader, cell: Cell | None = None
) -> list[tuple[optuna.trial.FrozenTrial, RunData]]:
    """The complete results with a readable run, one per trial cell, in trial order (`results` states the rule).

    Pruned, failed (killed, interrupted, ...), running and waiting trials are left out, and so is a complete trial
    whose cell is already held by another: what means, intervals and rankings may be computed over.
    """
    return results(study, reader, cell).runs("complete")
