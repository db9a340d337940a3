"""How a training run ends: its status (spelt here once) and the result `train()` returns, written as summary.json.

RunStatus, RUNNING ... FAILED      the statuses of a run; sweeps add a trial's own (`sweeps.record`)
COMPLETE_STATUSES, FINAL_STATUSES  a run that trained to its end; a run that ended by the loop's own decision
TrainResult                        train()'s result: typed fields, `to_dict()` for summary.json and the trackers,
                                   read like the dict it used to be (`result["status"]`, `result.get("reason")`)

Only the standard library is imported here: sweeps and dashboards read it without torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, get_args

__all__ = [
    "COMPLETED",
    "COMPLETE_STATUSES",
    "DIVERGED",
    "EARLY_STOPPED",
    "FAILED",
    "FINAL_STATUSES",
    "INTERRUPTED",
    "PRUNED",
    "RUNNING",
    "RUN_STATUSES",
    "RunStatus",
    "TrainResult",
]

RunStatus = Literal["running", "completed", "early_stopped", "pruned", "diverged", "interrupted", "failed"]
RUNNING: Final = "running"  # summary.json while the run goes on
COMPLETED: Final = "completed"  # trained every epoch of trainer.epochs
EARLY_STOPPED: Final = "early_stopped"  # the patience rule stopped it (trainer.early_stopping_*)
PRUNED: Final = "pruned"  # `on_epoch_end` stopped it (a sweep's pruner)
DIVERGED: Final = "diverged"  # a non-finite loss; the last good checkpoint is kept
INTERRUPTED: Final = "interrupted"  # Ctrl-C or SIGTERM; resumable from its last checkpoint
FAILED: Final = "failed"  # an exception
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)

# Trained to its end by its own rule: its result counts (a sweep's COMPLETE trial).
COMPLETE_STATUSES: tuple[RunStatus, ...] = (COMPLETED, EARLY_STOPPED)
# Ended by the loop's own decision: resuming it trains nothing unless trainer.epochs grows.
FINAL_STATUSES: tuple[RunStatus, ...] = (*COMPLETE_STATUSES, PRUNED, DIVERGED)


@dataclass(eq=False)
class TrainResult(Mapping[str, Any]):
    """What `train()` returns and summary.json holds (the same keys, in this order).

    best_<metric> is the best epoch value of each metric of `experiments.metrics.METRICS` over the whole run (a
    resumed run's earlier epochs included): the max of an accuracy, the min of a loss, None before the first
    epoch (best_val_accuracy: 0.0). best_epoch is the epoch of the best val accuracy (checkpoints/best.pt).

    A Mapping over `to_dict()`, so callers written for the dict keep working (`result["status"]`, `**result`,
    `result == json.loads(summary)`). `extra` keeps the keys of a summary.json this class does not name (a run
    written by another version), so reading one and writing it back loses nothing.
    """

    status: RunStatus | str
    reason: str = ""
    best_val_accuracy: float | None = 0.0
    best_val_loss: float | None = None
    best_train_accuracy: float | None = None
    best_train_loss: float | None = None
    best_epoch: int | None = None
    epochs_run: int = 0  # the last epoch trained (a resumed run's earlier epochs included)
    epochs: int | None = None  # trainer.epochs
    val_accuracy: float | None = None  # the last epoch's
    val_loss: float | None = None
    train_loss: float | None = None
    num_params: int | None = None  # the model's trainable parameters (a cost comparison's size axis)
    train_images_per_s: float | None = None
    wall_s: float | None = None  # every session of the run, setup and evaluation included
    run_dir: str | None = None
    wandb_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> TrainResult:
        """A result from summary.json or what a `train_fn` returned (a dict with these keys, or a TrainResult);
        keys it does not name go to `extra`, a field it lacks takes its default (status: None)."""
        named = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{"status": None, **{k: v for k, v in record.items() if k in named}},
            extra={k: v for k, v in record.items() if k not in named},
        )

    def to_dict(self) -> dict[str, Any]:
        """summary.json's object: the fields in order, then `extra`."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**out, **self.extra}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def plural(n: int, noun: str) -> str:
    """ "1 epoch", "2 epochs"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def epoch_line(m: dict[str, float], epochs: int, images: int | None = None, epoch: int | None = None) -> str:
    """The console line of one epoch's metrics (`images`: trained images, for the throughput; None leaves it out).

    Metrics missing from `m` are left out of the line (a sweep's `train_fn` may report only some of them); `epoch`
    stands in for ``m["epoch"]``."""

    def part(fmt: str, *keys: str) -> list[str]:
        return [fmt.format(*(m[k] for k in keys))] if all(k in m for k in keys) else []

    seconds = m.get("epoch_time")
    return " | ".join(
        [
            f"epoch {m.get('epoch', epoch)}/{epochs}",
            *part("train loss {:.4f} acc {:.4f}", "train_loss", "train_accuracy"),
            *part("val loss {:.4f} acc {:.4f}", "val_loss", "val_accuracy"),
            *part("lr {:.2e}", "learning_rate"),
            *([f"{images / max(seconds, 1e-9):.0f} img/s"] if images is not None and seconds else []),
            *([f"{seconds:.1f}s"] if seconds is not None else []),
        ]
    )
