"""One trial: suggest params, build the trial's training config, train with report/prune each epoch, record it.

The study side (`Objective`) lives on the main process only. Under multi-process Accelerate every other rank
receives the trial's `TrialSpec` and calls `run_trial` with no Optuna object at all: `train()` broadcasts the main
process's callback answer, so all ranks stop together and non-main ranks never touch the storage.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import shutil
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import FrozenTrial, TrialState

from experiments.config import READS_CONFIG_ONLY, to_yaml
from experiments.launch import stop_signal
from experiments.result import TrainResult, epoch_line, plural
from experiments.run_dir import RunDir, last_checkpoint
from sweeps.config import grid_cells, is_cell_study
from sweeps.format import format_number
from sweeps.optuna_internals import (
    ParamWrites,
    covers,
    held_param_writes,
    set_user_attrs,
    set_user_attrs_with_state,
    split_read,
    trial_record,
    trials_read_in_trial,
)
from sweeps.record import (
    COMPLETE_STATUSES,
    DUPLICATE,
    FAILED,
    INTERRUPTED,
    PRUNED,
    PRUNED_STATUSES,
    RETRY,
    RUNNING,
    SAMPLED,
    TrialAttr,
    retry_history,
    trial_origin,
)
from sweeps.recovery import worker_identity
from sweeps.samplers import DRAW_ATTR, draw_index, held_by, space_size, unsettled
from sweeps.space import (
    ConfigTemplate,
    Dimension,
    SweepConfigError,
    apply_params,
    config_node,
    fixed_values,
    release_config,
    set_item,
    unshared,
    window_label,
)
from sweeps.storage import mask_secrets

# `train(cfg, on_epoch_end=...)`: experiments.train's returns a TrainResult, a user's may return a plain dict with
# the same keys (both read through the Mapping interface here).
TrainFn = Callable[..., TrainResult | Mapping[str, Any]]
_ID_ALPHABET = string.ascii_lowercase + string.digits
# How long a sampled trial waits for earlier trials still drawing their parameters, and how often it looks.
_SETTLE_S, _SETTLE_POLL_S = 10.0, 0.02


@dataclass
class TrialSpec:
    """What every rank needs to train one trial (plain data: it is broadcast between processes)."""

    number: int
    params: dict[str, Any]
    run_dir: str
    wandb_id: str
    resume: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def new_run_id() -> str:
    """A W&B run id chosen before training, so the trial knows it even if its worker dies."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


class TrialConfigs:
    """Each trial's full training config: base + fixed + params, its run dir and its W&B run.

    What the study's trials share (the fixed values, the W&B group, job type and study tag, the study's keys of
    `tracker.extra_config`) is set once, on a `ConfigTemplate`; a trial's config is a copy of it with the trial's
    own values set (~1.5-2.7 ms a trial on this project's 2-core machine, most of it unpickling ~113 typed nodes).
    With `reuse` (a train_fn marked `reads_config_only`) the config handed out last is set anew instead (~0.2 ms:
    `sweeps.space.set_item` on its nodes), as long as nothing holds it or a node of it any more (reference counts,
    `sweeps.space.unshared`): a config a train_fn kept is left as it was, and the next trial gets a copy. A trial
    with `TrialSpec.extra` gets a copy.

    Not validated again per trial: the base config was validated once, each value set here is type-checked by the
    typed config as it is set, the space's values were checked against the model's rules before the study started
    (`sweeps.validate`), and `experiments.train.train` validates its config.
    """

    def __init__(self, base: DictConfig, sweep: DictConfig, reuse: bool = False) -> None:
        self.sweep, self.reuse, self._study_name = sweep, reuse, str(sweep.study_name)
        shared = apply_params(base, {}, fixed_values(sweep))
        wb = shared.tracker.get("wandb")  # None with tracker=none (or a preset without W&B)
        if wb is not None:
            wb.group, wb.job_type = sweep.study_name, "trial"
            wb.tags = [*wb.tags, f"study-{sweep.study_name}"]
        self._tags = list(wb.tags) if wb is not None else []
        # tracker.extra_config: the base's, then the study's keys, then each trial's (set on each copy)
        self._window = OmegaConf.select(shared, "model.rpb.window_size") is not None
        shared.tracker.extra_config = {
            **OmegaConf.to_container(shared.tracker.extra_config),
            "study_name": sweep.study_name,
            "sweep_kind": sweep.kind,
            **({"window_size": None} if self._window else {}),
            "trial_number": None,
            "trial_params": None,
        }
        self._template = ConfigTemplate(shared)
        self._last: DictConfig | None = None  # with `reuse`: the config handed out last

    def __call__(self, spec: TrialSpec) -> DictConfig:
        last, self._last = self._last, None
        reused = last is not None and not spec.extra and unshared(last, 1) is not None  # 1: `last`
        cfg = last if reused else self._template.copy()
        del last
        apply_params(cfg, spec.params, copy=False)
        wb, extra = config_node(cfg, "tracker.wandb"), config_node(cfg, "tracker.extra_config")
        for container, key, value in (
            (cfg, "run_dir", spec.run_dir),
            (cfg, "resume", spec.resume),
            (cfg, "name", f"{self._study_name}-trial-{spec.number}"),
            *(((wb, "name", f"trial-{spec.number}"), (wb, "id", spec.wandb_id)) if wb is not None else ()),
            (extra, "trial_number", spec.number),
        ):
            set_item(container, key, value)
        if self._window:
            # "7x7": W&B groups and filters runs by it; "none" without a bias table (its config's window means nothing)
            rpb = config_node(cfg, "model.rpb")
            label = window_label(list(rpb.window_size)) if rpb.get("enabled", True) else "none"
            set_item(extra, "window_size", label)
            if wb is not None:  # set in place: a node replaced would stay behind in a cycle, holding its parent
                tag, tags = f"window-{label}", config_node(wb, "tags")
                if len(tags) > len(self._tags):
                    set_item(tags, len(self._tags), tag)
                else:
                    tags.append(tag)
        held = config_node(extra, "trial_params")
        if isinstance(held, DictConfig) and held.keys() == spec.params.keys():
            for key, value in spec.params.items():  # in place, as the W&B tags
                set_item(held, key, value)
        else:
            extra.trial_params = dict(spec.params)
        if spec.extra:
            with open_dict(extra):
                extra.update(spec.extra)
        elif self.reuse:
            self._last = cfg
        return cfg

    def reuses(self, cfg: DictConfig) -> bool:
        """Whether `cfg` is the config this will set anew for the next trial (if nothing else holds it then)."""
        return cfg is self._last


def trial_config(base: DictConfig, sweep: DictConfig, spec: TrialSpec) -> DictConfig:
    """The full training config of one trial (`TrialConfigs`, where many trials are built from one base)."""
    return TrialConfigs(base, sweep)(spec)


def run_trial(
    configs: TrialConfigs,
    spec: TrialSpec,
    train_fn: TrainFn,
    on_epoch_end: Callable[[int, dict[str, float]], str | None] | None = None,
) -> TrainResult | Mapping[str, Any]:
    """Train one trial on this process (every rank calls it; only the main one passes `on_epoch_end`)."""
    cfg = configs(spec)
    returned = train_fn(cfg, on_epoch_end=on_epoch_end)
    if not configs.reuses(cfg):
        release_config(cfg)  # freed now, unless train_fn kept it
    return returned


def _resume_dir(record: FrozenTrial) -> str | None:
    """The run dir of the trial this one retries, when it left a checkpoint to continue from.

    A fresh trial has no `run_dir` yet; a retry (`sweeps.recovery`) carries the user attrs of the trial it
    replaces. A checkpoint counts only when it is complete (`experiments.run_dir.last_checkpoint`): a trial
    killed before its first save starts from scratch.
    """
    old = record.user_attrs.get(TrialAttr.RUN_DIR)
    return old if old and last_checkpoint(old) is not None else None


def seed_resume(old_run_dir: str, cfg: DictConfig) -> str:
    """Copy a killed trial's last checkpoint into the retry's run dir, with the retry's config; returns that dir.

    train(resume=<dir>) continues in <dir> with <dir>/config.yaml, so the retry keeps its own run dir and name
    while starting from the epoch the old trial had reached; the W&B run record comes along, so the retry
    continues the old trial's W&B run (one W&B run per trial cell, its steps increasing across the retry).
    """
    old, new = RunDir(old_run_dir), RunDir(cfg.run_dir)
    shutil.rmtree(new.checkpoints, ignore_errors=True)
    new.checkpoints.mkdir(parents=True, exist_ok=True)
    shutil.copytree(old.last_checkpoint, new.last_checkpoint)
    for name in ("metrics", "wandb_run_file"):
        if getattr(old, name).exists():
            shutil.copy2(getattr(old, name), getattr(new, name))
    cfg = cfg.copy()
    cfg.resume = None
    new.write_config(to_yaml(cfg))
    return str(new)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return mask_secrets(f"{type(e).__name__}: {text}" if text else type(e).__name__)


def last_value(trial: FrozenTrial) -> float | None:
    """The value a trial reported last (a pruned trial's standing), None without a report."""
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def params_text(params: Mapping[str, Any]) -> str:
    """A trial's params for its line: "lr 0.002, window_size 7x7, ..."."""
    return ", ".join(f"{name.split('.')[-1]} {format_number(value)}" for name, value in params.items())


def trial_line(
    trial: FrozenTrial, metric: str, describe_params: Callable[[Mapping[str, Any]], str] = params_text
) -> str:
    """The one line printed when a trial finishes: number, state, value, epochs, params (`describe_params`).

    trial 3 complete: val_accuracy 0.512 after 5 epochs | lr 0.000316, weight_decay 0.0125, window_size 5x5
    trial 6 complete: val_accuracy 0.964 after 35 epochs (best at epoch 33) | lr ...
    trial 4 pruned at epoch 2 (val_accuracy 0.41) | lr 0.00871, ...
    trial 5 failed: RuntimeError: CUDA out of memory | lr ...
    """
    status = trial.user_attrs.get(TrialAttr.STATUS) or trial.state.name.lower()
    epochs = int(trial.user_attrs.get(TrialAttr.EPOCHS_RUN) or len(trial.intermediate_values))
    if trial.state == TrialState.COMPLETE:
        head = f"complete: {metric} {format_number(trial.value)} after {plural(epochs, 'epoch')}"
        best = [e for e, v in trial.intermediate_values.items() if v == trial.value]
        if best and max(best) != max(trial.intermediate_values):  # its value is an earlier epoch's (sweep.value=best)
            head += f" (best at epoch {max(best)})"
    elif trial.state == TrialState.PRUNED:
        head = f"{status} at epoch {epochs} ({metric} {format_number(last_value(trial))})"
    else:
        head = f"{status}: {trial.user_attrs.get(TrialAttr.REASON) or 'see the study record'}"
    return f"trial {trial.number} {head}" + (f" | {params}" if (params := describe_params(trial.params)) else "")


def progress_due(epoch: int, epochs: int, lines: int = 10) -> bool:
    """Whether a trial prints its progress line after `epoch`: the first epoch, then about `lines` more, evenly
    spaced, the last included (20 epochs: 1, 2, 4, ..., 20; 35 epochs: every 4th), a line about every few seconds
    of a short trial without a study's console running to pages."""
    every = max(1, math.ceil(epochs / lines))
    return epoch == 1 or epoch % every == 0 or epoch == epochs


def format_duration(seconds: float) -> str:
    """ "45s", "3m10s", "1h05m": a time left, to the precision a person reads it."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class Progress:
    """Where a study stands, for the lines a sweep prints: a trial's place among the study's results ("4 of 12")
    and, once this worker has finished a trial, the time left for the trial and for the study.

    Attributes:
        n_trials: the results the study should hold (None: until a timeout or the grid's end).
        workers: the workers sharing the study (the study's time left divides by them).
        durations: seconds of the trials this worker finished.
    """

    n_trials: int | None
    workers: int = 1
    durations: list[float] = field(default_factory=list)

    @staticmethod
    def place(trials: list[FrozenTrial], number: int) -> int:
        """The trial's place among the study's `trials`: results, plus running trials numbered before it, plus
        one."""
        unfinished, states = split_read(trials)
        running_before = sum(t.number < number and t.state is TrialState.RUNNING for t in unfinished)
        return 1 + states[TrialState.COMPLETE] + states[TrialState.PRUNED] + running_before

    def tag(self, number: int, place: int) -> str:
        return f"trial {number}, {place} of {self.n_trials}" if self.n_trials else f"trial {number}, {place}"

    def time_left(self, place: int, trial_elapsed: float, done: int, left: int) -> str:
        """ "~1m20s left in the trial, ~14m in the study" (empty until there is something to go by)."""
        parts = []
        if done > 0 and left > 0:
            parts.append(f"~{format_duration(trial_elapsed / done * left)} left in the trial")
        if self.durations and self.n_trials:
            trial_left = trial_elapsed / done * left if done > 0 else 0.0
            mean = sum(self.durations) / len(self.durations)
            study_left = trial_left + mean * max(0, self.n_trials - place) / max(1, self.workers)
            parts.append(f"~{format_duration(study_left)} in the study")
        return ", ".join(parts)


def _retried(trial: FrozenTrial) -> int | None:
    """The number of the trial `trial` retries last (None: it retries none)."""
    return (retry_history(trial) or [None])[-1]


class DuplicateTrial(RuntimeError):
    """A sampled trial that repeats an earlier trial's parameters (failed before it trains)."""


class _DropSaidFailures:
    """Logging filter: Optuna's two warnings (its traceback, then "failed with value None") about a trial stopped
    with Ctrl-C or refused as a duplicate; the trial's own line and the Ctrl-C line say it. A trial that crashed
    keeps its traceback."""

    def __init__(self) -> None:
        self.dropped: set[str] = set()  # "Trial N " prefixes whose follow-up warning goes too

    def filter(self, record) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        message = record.getMessage()
        if exc is not None and issubclass(exc, (KeyboardInterrupt, DuplicateTrial)):
            self.dropped.add(" ".join(message.split()[:2]))
            return False
        head = " ".join(message.split()[:2])
        if head in self.dropped and "failed with value" in message:
            self.dropped.discard(head)
            return False
        return True


def quiet_optuna() -> None:
    """Optuna's own per-trial INFO lines off (`Objective.announce` prints one line per finished trial) and its
    tracebacks of Ctrl-C'd or duplicate trials dropped; its warnings and errors stay. Idempotent; every worker
    process calls it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in optuna.logging.get_logger("optuna").handlers:  # records of optuna.* loggers reach these
        if not any(isinstance(f, _DropSaidFailures) for f in handler.filters):
            handler.addFilter(_DropSaidFailures())


def study_size(sweep: DictConfig, dims: list[Dimension]) -> int | None:
    """The results a study should hold, for its progress lines: `sweep.n_trials`, or for a cell study (a grid, an
    ablation) its cells, whichever is fewer (None: until a timeout or an exhausted space)."""
    if not is_cell_study(sweep):
        return sweep.n_trials
    cells = len(grid_cells(sweep, dims))
    return cells if sweep.n_trials is None else min(int(sweep.n_trials), cells)


class Objective:
    """`objective(trial)` for `study.optimize`: suggests, trains through `train_fn`, reports every epoch.

    Args:
        base: the training config every trial starts from.
        sweep: the checked `sweep` node.
        dims: the search space.
        train_fn: `train(cfg, on_epoch_end=...)` (tests inject a fake one).
        broadcast: called with the TrialSpec before training (multi-process: hands it to the other ranks).
    """

    def __init__(
        self,
        base: DictConfig,
        sweep: DictConfig,
        dims: list[Dimension],
        train_fn: TrainFn,
        broadcast: Callable[[TrialSpec], None] | None = None,
    ) -> None:
        self.base, self.sweep, self.dims, self.train_fn, self.broadcast = base, sweep, dims, train_fn, broadcast
        self.configs = TrialConfigs(base, sweep, reuse=getattr(train_fn, READS_CONFIG_ONLY, False))
        self.finite = space_size(dims) is not None  # a space two workers may draw the same set from
        self.maximize = sweep.direction == "maximize"
        # read once: a config's attribute access costs ~10-40 us, and these are read every trial or epoch
        self.metric, self._epochs = str(sweep.metric), int(base.trainer.epochs)
        self._trials_dir = Path(sweep.output_dir) / sweep.study_name
        self.last_status: str | None = None
        # How a trial line names the trial's params: the train_fn's own `describe_params` (the ablation names its
        # setting and seed), else `params_text`.
        self.describe_params: Callable[[Mapping[str, Any]], str] = getattr(train_fn, "describe_params", params_text)
        self.progress = Progress(study_size(sweep, dims), sweep.workers)
        self._places: dict[int, int] = {}  # trial number -> its place, for the line that ends it

    def spec(self, trial: optuna.Trial) -> TrialSpec:
        params = {dim.path: dim.suggest(trial) for dim in self.dims}
        run_dir = self._trials_dir / f"trial-{trial.number}"
        return TrialSpec(trial.number, params, str(run_dir), new_run_id())

    def __call__(self, trial: optuna.Trial) -> float:
        self.last_status = None
        record = trial_record(trial)  # as taken: a retry's record holds its killed attempts' epochs
        if TrialAttr.WORKER not in record.user_attrs:  # a WorkerStudy records it as it takes the trial; else first
            trial.set_user_attr(TrialAttr.WORKER, worker_identity())
        origin = trial_origin(record.system_attrs)
        spec, trials = self._start(trial, record, origin)
        if self.broadcast is not None:
            self.broadcast(spec)
        # The trial's record: epoch -> reported value, the epochs of its killed attempts included (a retry is
        # enqueued with them); its value is computed from this record alone (`value`).
        history: dict[int, float] = dict(record.intermediate_values)
        epochs = int(spec.params.get("trainer.epochs", self._epochs))
        place = self._places[trial.number] = self.progress.place(trials, trial.number)
        tag = self.progress.tag(trial.number, place)
        resumed = f" (resumed from {spec.resume})" if spec.resume else ""
        print(f"[{tag}] started{resumed}: {self.describe_params(spec.params) or 'no params'}", flush=True)
        started, first_epoch = time.perf_counter(), None

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> str | None:
            nonlocal first_epoch
            first_epoch = epoch if first_epoch is None else first_epoch
            if progress_due(epoch, epochs):
                # an epoch's own time where train_fn reports it (the first epoch's wall time also holds the setup)
                seconds = metrics.get("epoch_time")
                elapsed, done = (
                    (float(seconds), 1) if seconds else (time.perf_counter() - started, epoch - first_epoch + 1)
                )
                left = self.progress.time_left(place, elapsed, done, epochs - epoch)
                line = epoch_line(metrics, epochs, epoch=epoch) + (f" | {left}" if left else "")
                print(f"[{tag}] {line}", flush=True)
            if self.metric not in metrics:
                raise RuntimeError(
                    f"train_fn reported no {self.metric!r} for epoch {epoch} (it reported "
                    f"{', '.join(sorted(metrics)) or 'nothing'}): set sweep.metric to one of its metrics."
                )
            value = float(metrics[self.metric])
            if not math.isfinite(value):
                return None  # train() reports the divergence itself
            if int(epoch) in history:  # a killed attempt reported this epoch (and the pruner judged it) already
                return None
            history[int(epoch)] = value
            trial.report(value, int(epoch))
            return PRUNED if trial.should_prune() else None

        try:
            returned = run_trial(self.configs, spec, self.train_fn, on_epoch_end)
        except KeyboardInterrupt:
            self._record(trial, INTERRUPTED, f"KeyboardInterrupt: stopped with {stop_signal()}")
            raise
        except SweepConfigError as e:
            self._record(trial, FAILED, str(e))
            raise
        except Exception as e:
            self._record(trial, FAILED, _reason(e))
            raise
        self.progress.durations.append(time.perf_counter() - started)
        result = TrainResult.from_dict(returned)  # a user's train_fn may return a plain dict
        status, reason = str(result.status), str(result.reason or "")
        # With the status, in one write: the epochs run, and the run folder and W&B run train() ended with where
        # they differ from those recorded before training.
        ended = {TrialAttr.EPOCHS_RUN: int(result.epochs_run or max(history, default=0))}
        for key, recorded, returned in (
            (TrialAttr.RUN_DIR, spec.run_dir, result.run_dir),
            (TrialAttr.WANDB_RUN_ID, spec.wandb_id, result.wandb_run_id),
        ):
            if returned and str(returned) != recorded:
                ended[key] = str(returned)
        self._record(trial, status, reason, ended, with_state=True)  # Optuna's tell follows
        if status in PRUNED_STATUSES:
            raise optuna.TrialPruned(f"{status}: {reason}" if reason else status)
        if status not in COMPLETE_STATUSES:
            raise RuntimeError(f"train() ended with status {status!r} ({reason})")
        return self.value(history, result)

    def _start(self, trial: optuna.Trial, record: FrozenTrial, origin: str) -> tuple[TrialSpec, list[FrozenTrial]]:
        """Draw the trial's parameters, refuse a repeat (`DuplicateTrial`), and record the start in one write: the
        parameters, origin, draw index, run dir, W&B run and status "running". Returns the spec and the study's
        trials as last read."""
        old_run_dir = _resume_dir(record)  # read before run_dir is overwritten
        with held_param_writes(trial) as writes:  # the parameters go out with the start's write
            spec = self.spec(trial)
            # The study as the sampler read it in this trial (no read of its own), for the refusals and the trial's
            # place; read again where a repeat could have appeared since: a queued trial's claim, an earlier trial
            # created after the read, or one that was still drawing its parameters (waited for: `_settled`).
            trials = trials_read_in_trial(trial.study)
            names = [d.path for d in self.dims]
            if origin != SAMPLED or not covers(trials, trial.number) or unsettled(trials, names, trial.number):
                trials = self._settled(trial, names) if origin == SAMPLED else trial.study.get_trials(deepcopy=False)
            attrs: dict[str, Any] = {TrialAttr.ORIGIN: origin}
            draw = {}  # its place in the study's draws, Hyperband's bracket (a retry carries its original's)
            # Recorded only where it is not the trial's number (retries numbered before it): readers count it when
            # it is absent, and TPE loops over every system attr of every trial each time it samples.
            if (
                DRAW_ATTR not in record.system_attrs and origin != RETRY
                and (index := draw_index(trial.study, record, trials)) != record.number
            ):  # fmt: skip
                draw[DRAW_ATTR] = index
            refused = (
                self._duplicate(trial, spec.params, trials) if origin == SAMPLED else self._second_claim(trial, trials)
            )
            if refused:
                self._record(trial, DUPLICATE, refused, attrs, draw, writes)
                raise DuplicateTrial(refused)
            if old_run_dir:
                previous = RunDir(old_run_dir).wandb_run()
                if previous is not None:  # the retry continues its predecessor's W&B run
                    spec.wandb_id = previous.id
                spec.resume = seed_resume(old_run_dir, self.configs(spec))
                attrs[TrialAttr.RESUMED_FROM] = old_run_dir
            # Where its files go (a run killed mid-way is found and resumed from them) and "running". (No reason
            # yet: a retry does not inherit its original's, `sweeps.recovery`.)
            attrs.update(
                {TrialAttr.RUN_DIR: spec.run_dir, TrialAttr.WANDB_RUN_ID: spec.wandb_id, TrialAttr.STATUS: RUNNING}
            )
            set_user_attrs(trial, attrs, draw, writes)
        return spec, trials

    def _settled(self, trial: optuna.Trial, names: list[str]) -> list[FrozenTrial]:
        """The study read again until no trial numbered below this one is still drawing its parameters
        (`unsettled`), for at most _SETTLE_S (a worker that died while drawing leaves its trial unsettled; that
        trial never trains); read once in a continuous space, where two draws of one set are all but impossible.

        Of two workers drawing the same set at once, the trial numbered higher is refused (`_duplicate`); it can
        be only if it sees the lower one's parameters, which that trial writes as it starts. Reading once was not
        enough: the higher trial could read before the lower one's write, and both trained the same set."""
        deadline = time.monotonic() + (_SETTLE_S if self.finite else 0.0)
        while True:
            trials = trial.study.get_trials(deepcopy=False)
            if not unsettled(trials, names, trial.number) or time.monotonic() > deadline:
                return trials
            time.sleep(_SETTLE_POLL_S)

    def announce(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial (`sweeps.worker`, as the next `ask()` reads the study): one line per finished trial
        (`trial_line`), with its place in the study."""
        line = trial_line(trial, self.metric, self.describe_params)
        place = self._places.pop(trial.number, None)
        if place is not None:
            line = line.replace(f"trial {trial.number} ", f"{self.progress.tag(trial.number, place)} ", 1)
        print(line, flush=True)

    def _duplicate(self, trial: optuna.Trial, params: dict[str, Any], trials: list[FrozenTrial]) -> str | None:
        """Why a sampled trial is refused before it trains (None: it is not): an earlier trial holds its
        parameters.

        The sampler draws only new sets (`TrialSeededSampler`); two workers drawing from a small finite space at
        the same instant can still pick the same one, and then the later trial gives way.
        """
        number = held_by(trial.study, [d.path for d in self.dims], params, before=trial.number, trials=trials)
        return None if number is None else f"trial {number} holds the same parameters; not trained again"

    def _second_claim(self, trial: optuna.Trial, trials: list[FrozenTrial]) -> str | None:
        """Why a queued trial is refused before it trains (None: it is not): an earlier live trial claims its grid
        cell or the trial it retries.

        Cells are enqueued once and a retry once per failed trial, so this guards against the rare repair races
        (a creator that died half-way, two starts repairing the same stale trial): the lowest-numbered trial that
        is not failed holds the claim.
        """
        me = trial_record(trial)
        claims = [(TrialAttr.CELL, me.user_attrs.get(TrialAttr.CELL)), (TrialAttr.RETRY_OF, _retried(me))]
        for t in trials:
            if t.number >= trial.number or t.state == optuna.trial.TrialState.FAIL:
                continue
            theirs = {TrialAttr.CELL: t.user_attrs.get(TrialAttr.CELL), TrialAttr.RETRY_OF: _retried(t)}
            for key, value in claims:
                if value is not None and theirs[key] == value:
                    return f"trial {t.number} already holds {key} {value}; not trained again"
        return None

    def value(self, history: dict[int, float], result: Mapping[str, Any]) -> float:
        """The trial's objective value from its own record: the best (in the study's direction) or the last of the
        values it reported, epoch -> value, the epochs of killed attempts included; what `train_fn` returns is used
        only by a `train_fn` that reported no epoch.

        Raises:
            RuntimeError: no epoch reported and no finite metric returned.
        """
        finite = {epoch: v for epoch, v in history.items() if math.isfinite(v)}
        if finite:
            if self.sweep.value != "best":
                return finite[max(finite)]
            return max(finite.values()) if self.maximize else min(finite.values())
        key = f"best_{self.sweep.metric}" if self.sweep.value == "best" else self.sweep.metric
        value = result.get(key, result.get(self.sweep.metric))
        if value is None or not math.isfinite(float(value)):
            raise RuntimeError(f"train() returned no finite {self.sweep.metric}")
        return float(value)

    def _record(
        self,
        trial: optuna.Trial,
        status: str,
        reason: str,
        attrs: Mapping[str, Any] = {},
        system_attrs: Mapping[str, Any] = {},
        params: ParamWrites | None = None,
        with_state: bool = False,
    ) -> None:
        """Write the trial's status, its reason (readers take a missing one as "") and `attrs` (and the parameter
        writes `params` holds back), in one write; `with_state`: in the write of the trial's finished state, where
        the storage allows (`set_user_attrs_with_state`)."""
        self.last_status = status
        ended = {**attrs, TrialAttr.STATUS: status, **({TrialAttr.REASON: mask_secrets(reason)} if reason else {})}
        with contextlib.suppress(Exception):  # the storage may be gone (Ctrl-C during a write); its state still tells
            if with_state:
                set_user_attrs_with_state(trial, ended, system_attrs)
            else:
                set_user_attrs(trial, ended, system_attrs, params)
