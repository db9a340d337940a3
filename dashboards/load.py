"""Read a study and its runs: the Optuna storage plus each trial's run folder (no network).

The run folder layout is the contract with training (see `experiments.train`):
``config.yaml``, ``metrics.jsonl`` (one epoch a line), ``summary.json``, ``bias/offset_maps.pt``.
A reader turns one finished trial into a `RunData`; `LocalRunReader` reads run folders,
`dashboards.wandb_reader.WandbRunReader` reads the same fields through the W&B public API.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna


@dataclass
class RunData:
    """What the report needs from one run, whatever it was read from.

    Args:
        name: a short label (``trial-3``).
        config: the resolved, nested training config.
        history: the epoch metrics dicts, in epoch order.
        summary: the dict ``train()`` returned.
        run_dir: the local run folder, when there is one.
        heatmap_images: pre-rendered heatmap PNGs by block (the W&B reader's fallback for offset maps).
        study_wall_s: seconds from its trial's start to its end as the study recorded them (set by `results`):
            the wall time of a run whose summary has no ``wall_s``.
    """

    name: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    run_dir: Path | None = None
    heatmap_images: dict[int, Path] = field(default_factory=dict)
    study_wall_s: float | None = None
    _offset_maps: Callable[[], dict[int, Any] | None] | None = field(default=None, repr=False)

    def offset_maps(self) -> dict[int, Any] | None:
        """Block index -> (num_heads, 2Wh-1, 2Ww-1) tensor of the final model, or None when not saved."""
        return self._offset_maps() if self._offset_maps is not None else None


class RunReader(Protocol):
    """Turns one trial of a study into the data of its run (None when the run left nothing to read)."""

    def read(self, trial: optuna.trial.FrozenTrial) -> RunData | None: ...


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
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object a line; a torn last line (a run killed mid-write) is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_run_dir(run_dir: Path, name: str | None = None) -> RunData:
    """Read one run folder written by ``experiments.train.train``."""
    import yaml

    from experiments.run_dir import RunDir  # the run folder's layout, shared with training and sweeps

    run = RunDir(run_dir)
    run_dir = run.path
    config = yaml.safe_load(run.config.read_text()) if run.config.is_file() else {}
    history = run.read_metrics()
    summary = run.read_summary()
    maps_path = run.offset_maps

    def offset_maps() -> dict[int, Any] | None:
        if not maps_path.is_file():
            return None
        import torch

        return {int(k): v for k, v in torch.load(maps_path, map_location="cpu", weights_only=True).items()}

    images = run.heatmaps()
    return RunData(
        name=name or run_dir.name,
        config=config or {},
        history=history,
        summary=summary,
        run_dir=run_dir,
        heatmap_images=images,
        _offset_maps=offset_maps,
    )


class LocalRunReader:
    """Reads each trial's run folder (``user_attrs["run_dir"]``), relative paths against `root`."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else Path.cwd()

    def read(self, trial: optuna.trial.FrozenTrial) -> RunData | None:
        run_dir = trial.user_attrs.get("run_dir")
        if not run_dir:
            return None
        path = Path(run_dir)
        if not path.is_absolute():
            path = self.root / path
        if not path.is_dir():
            return None
        return read_run_dir(path, name=f"trial-{trial.number}")


# --- One trial, one result -------------------------------------------------------------------------------------

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
RESULT_STATES = (COMPLETE, PRUNED)
Cell = Callable[[optuna.trial.FrozenTrial, "RunData | None"], Hashable]


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


def retried_from(trial: optuna.trial.FrozenTrial) -> set[int]:
    """Numbers of the earlier attempts `trial` retries (``system_attrs["retry_history"]``, ``user_attrs["retry_of"]``)."""
    earlier = {int(n) for n in trial.system_attrs.get("retry_history", []) or []}
    if trial.user_attrs.get("retry_of") is not None:
        earlier.add(int(trial.user_attrs["retry_of"]))
    return earlier


def _hashable(value: Any) -> Hashable:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def params_cell(trial: optuna.trial.FrozenTrial, run: RunData | None = None) -> Hashable:
    """A trial's cell: its params; a trial without params is a cell of its own (with the attempts it retries)."""
    if trial.params:
        return ("params", _hashable(trial.params))
    return ("trial", min({trial.number, *retried_from(trial)}))


def default_cell(study: optuna.Study) -> Cell:
    """`params_cell`, or for an ablation study (kind "ablation") its setting and seed (`dashboards.ablation`)."""
    if study.user_attrs.get("kind") == "ablation":
        from dashboards.ablation import ablation_cell  # ablation imports this module

        return ablation_cell
    return params_cell


def results(study: optuna.Study, reader: RunReader, cell: Cell | None = None) -> Results:
    """One trial, one result: what every summary, table, plot and count of the dashboards reads.

    The rule:

    * A result is a trial in state COMPLETE (ranked, enters means and intervals) or PRUNED (stopped early: shown
      apart, never ranked among or averaged with complete ones).
    * A FAIL trial is never a result, whatever its ``user_attrs["status"]`` (stale, interrupted, failed,
      duplicate, ...): a killed attempt and its retry are one trial, and the retry is the result. FAIL trials are
      listed in `Results.attempts` (to be counted, never plotted or averaged). RUNNING and WAITING trials are not
      results either.
    * One result per cell (`cell(trial, run)`; by default `default_cell`: the params, for an ablation the
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
