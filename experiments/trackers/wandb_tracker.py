"""W&B tracker: one W&B run per run folder, offline unless configured, never a login prompt, quiet unless asked.

`open_run` and `log_file_artifact` are the two W&B calls the tracker makes, shared with the study's own run at the
end of a sweep (`sweeps.wandb_study`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.config_errors import ConfigError
from experiments.metrics import METRICS, metric_direction
from experiments.run_dir import RunDir, WandbRun
from experiments.trackers.common import (
    EPOCH_GLOBS,
    EPOCH_KEYS,
    FAILED_STATES,
    STEP_PREFIX,
    mask_secrets,
    scalar,
    split_by_family,
    to_plain,
)

WANDB_MODES = ("offline", "online", "disabled")  # disabled: no W&B run, nothing written, W&B never imported
log = logging.getLogger(__name__)
MODEL_ARTIFACT_TYPE = "model"  # a run's best checkpoint, `model-<run id>` (the name Lightning's WandbLogger uses)


def open_run(
    mode: str,
    directory: Path,
    config: Mapping[str, Any],
    *,
    tags: Sequence[str] = (),
    verbose: bool = False,
    resume: str | None = None,
    **init_kwargs: Any,
) -> Any:
    """A new W&B run under `<directory>/wandb` (`reinit="create_new"`: many runs in one process), with the mode
    explicit so W&B never prompts, no console capture, W&B's own lines only when `verbose`.

    Args:
        mode: "offline" or "online" (callers leave "disabled" out: it records nothing).
        config: recorded with its secrets masked.
        init_kwargs: the other `wandb.init` arguments (project, entity, group, job_type, name, id, notes); None
            and empty values are left out.

    Raises:
        ConfigError: mode online without W&B credentials (it would prompt on a terminal, and block unattended).
    """
    import wandb  # optional and ~1 s to import: deferred on purpose, to a run that logs to W&B

    if mode == "online" and wandb.run is None and not wandb.login(prompt=False, verify=False):
        raise ConfigError(
            "tracker.wandb.mode=online found no W&B credentials (or WANDB_MODE=offline is set): run `wandb login` "
            "or set WANDB_API_KEY, or use tracker.wandb.mode=offline and `wandb sync` later."
        )
    return wandb.init(
        mode=mode,
        dir=str(directory),
        config=mask_secrets(to_plain(config)),
        tags=[str(t) for t in tags],
        reinit="create_new",
        resume=resume,
        # Console capture would copy every progress-bar line into the run; the loop logs what matters.
        settings=wandb.Settings(console="off", silent=not verbose),
        **{k: v for k, v in init_kwargs.items() if v},
    )


def log_file_artifact(
    run: Any,
    path: Path,
    *,
    name: str,
    type: str,
    metadata: Mapping[str, Any] | None = None,
    aliases: Sequence[str] = (),
    in_place: bool = False,
) -> None:
    """Log the file `path` as version N of artifact `name` (type `type`) of `run`.

    Args:
        in_place: the artifact's file is `path` itself, not a copy. W&B copies a file it logs (policy "mutable")
            into its staging folder under the home directory (WANDB_DATA_DIR), where an offline run's copy waits
            for `wandb sync`: a checkpoint per trial of a sweep would pile up there. In place, the offline run's
            record points at the file in the run folder, which `wandb sync` uploads; change it before the sync
            and that version cannot be uploaded.
    """
    import wandb

    artifact = wandb.Artifact(name, type=type, metadata=_plain_metadata(metadata or {}))
    artifact.add_file(str(path), name=Path(path).name, policy="immutable" if in_place else "mutable")
    run.log_artifact(artifact, aliases=list(aliases))


def _plain_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers, strings and booleans of `metadata`, secrets masked (W&B stores metadata as JSON)."""
    return {k: v for k, v in mask_secrets(dict(metadata)).items() if isinstance(v, (str, int, float, bool))}


class WandbTracker:
    """One W&B run per run folder (`reinit="create_new"`, so a sweep can run many in one process).

    The mode is always explicit, so W&B never prompts for a login: `offline` (default; the run lands in
    `<run_dir>/wandb/offline-run-*`, `wandb sync` uploads it later) or `online`.

    The run's id and last step live in the run folder (`RunDir.wandb_run_file`). `start` in a folder that holds
    one continues that W&B run (`resume="allow"`, as W&B documents resuming by id) with steps after its last one,
    so an interrupted run that is resumed, or a retried sweep trial seeded with its predecessor's folder, stays one
    W&B run; `experiments.train` removes the record before a fresh (not resumed) run. Every row is logged with an
    explicit W&B step (offline runs do not know the step a resumed run reached). W&B prints nothing unless
    `verbose` (banners, run summaries: about 30 lines per run).
    """

    title = "W&B"  # how config errors name it

    def __init__(
        self,
        *,
        mode: str = "offline",
        project: str | None = "rpb-lab",
        entity: str | None = None,
        group: str | None = None,
        job_type: str | None = "train",
        tags: list[str] | tuple[str, ...] = (),
        name: str | None = None,  # None: the run folder's name
        id: str | None = None,
        notes: str | None = None,
        verbose: bool = False,
    ) -> None:
        if mode not in WANDB_MODES:
            raise ConfigError(f"tracker.wandb.mode={mode!r} is not a W&B mode: use one of {', '.join(WANDB_MODES)}.")
        self.mode = mode
        self.init_kwargs = dict(project=project, entity=entity, group=group, job_type=job_type, name=name, id=id)
        self.init_kwargs["notes"] = notes
        self.tags = [str(t) for t in tags]
        self.verbose = bool(verbose)
        self.run = None
        self.run_id: str | None = None
        self._run_dir: RunDir | None = None
        self._step = -1  # the last W&B step logged
        self._best_val_accuracy = -math.inf
        self._history_keys: set[str] = set()

    @property
    def records(self) -> bool:
        """False in mode disabled: the run gets no W&B tracker at all (`experiments.tracking.build_tracker`)."""
        return self.mode != "disabled"

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        if self.mode == "disabled":
            return
        folder = RunDir(run_dir)
        folder.path.mkdir(parents=True, exist_ok=True)
        previous = folder.wandb_run()
        init_kwargs = {**self.init_kwargs, "name": self.init_kwargs["name"] or folder.path.name}
        if previous is not None:
            init_kwargs["id"] = previous.id
        self._step = previous.step if previous is not None else -1
        self.run = open_run(
            self.mode,
            folder.path,
            config,
            tags=self.tags,
            verbose=self.verbose,
            resume="allow" if previous is not None else None,
            **init_kwargs,
        )
        self._run_dir = folder
        self.run_id = self.run.id
        folder.write_wandb_run(WandbRun(self.run_id, self._step))
        run = self.run
        run.define_metric("global_step", hidden=True)
        run.define_metric("epoch", hidden=True)
        run.define_metric(f"{STEP_PREFIX}*", step_metric="global_step")
        for key in EPOCH_KEYS:  # the run's summary keeps a metric's best: max of an accuracy, min of a loss
            best = {"maximize": "max", "minimize": "min"}.get(metric_direction(key)) if key in METRICS else None
            run.define_metric(key, step_metric="epoch", summary=best)
        for glob in EPOCH_GLOBS:
            run.define_metric(glob, step_metric="epoch")

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.run is None:
            return
        step_metrics, epoch_metrics = split_by_family(metrics)
        for row, step_key in ((step_metrics, "global_step"), (epoch_metrics, "epoch")):
            if not row:
                continue
            self._history_keys.update(row)
            if step is not None:
                row.setdefault(step_key, step)
            self._log(row)
        val_accuracy = scalar(metrics.get("val_accuracy"))
        if val_accuracy is not None and val_accuracy > self._best_val_accuracy:
            self._best_val_accuracy = val_accuracy
            self.run.summary["best_val_accuracy"] = val_accuracy

    def log_images(self, images: Mapping[str, np.ndarray], step: int | None = None) -> None:
        if self.run is None or not images:
            return
        import wandb

        caption = None if step is None else f"epoch {step}"
        row: dict[str, Any] = {k: wandb.Image(np.asarray(v), caption=caption) for k, v in images.items()}
        if step is not None:
            row["epoch"] = step
        self._log(row)

    def _log(self, row: dict[str, Any]) -> None:
        """One history row at the next W&B step, recorded in the run folder for a later resume."""
        self._step += 1
        self.run.log(row, step=self._step)
        if self._run_dir is not None:
            self._run_dir.write_wandb_run(WandbRun(self.run_id, self._step))

    def finish(self, state: str, summary: Mapping[str, Any] | None = None) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        summary = dict(summary or {})
        try:
            # Keys that were logged as history keep W&B's own summary (e.g. val_accuracy's max); add the rest.
            for key, value in summary.items():
                if key not in self._history_keys and (value is None or isinstance(value, (str, int, float, bool))):
                    run.summary[key] = value
            run.summary["state"] = state
            run.summary["reason"] = summary.get("reason") or ""  # W&B drops None values
            run.tags = (*run.tags, state) if state not in run.tags else run.tags
            self._log_best_checkpoint(run, state, summary)
        finally:
            run.finish(exit_code=1 if state in FAILED_STATES else 0)

    def _log_best_checkpoint(self, run: Any, state: str, summary: Mapping[str, Any]) -> None:
        """`checkpoints/best.pt` as artifact `model-<run id>` (type "model", alias "best"), its summary as metadata.

        A failed or interrupted run logs none: it is resumed or retried, and logs its best when it ends. Offline,
        the artifact's file is the run folder's checkpoint itself (`log_file_artifact`'s `in_place`): sync the run
        before extending it (`resume=` with more epochs), which may overwrite best.pt.
        """
        best = self._run_dir.best_checkpoint if self._run_dir is not None else None
        if state in FAILED_STATES or best is None or not best.is_file():
            return
        try:
            log_file_artifact(run, best, name=f"model-{run.id}", type=MODEL_ARTIFACT_TYPE, aliases=["best"],
                              metadata={"state": state, **summary}, in_place=self.mode == "offline")  # fmt: skip
        except Exception as err:  # the run's result stands without its artifact: say so, do not fail the run
            log.warning("W&B run %s: the best checkpoint was not logged as an artifact (%s)", run.id, err)
