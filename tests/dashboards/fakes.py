"""Fabricated studies and run folders in the contract's layout, so the report is tested without training."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import optuna
import torch
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

DEPTH, HEADS = 2, 4


def journal(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def run_config(window: int, seed: int, bias_type: str = "2d", lr: float = 1e-3, epochs: int = 3) -> dict:
    """A resolved config with the contract's key names (shrunk to what the report reads and a bit more)."""
    return {
        "seed": seed,
        "name": f"w{window}-s{seed}",
        "data": {"name": "digits", "img_size": 28, "in_channels": 1, "num_classes": 10, "batch_size": 32},
        "model": {
            "patch_size": 4,
            "embed_dim": 32,
            "depth": DEPTH,
            "num_heads": HEADS,
            "class_token": True,
            "rpb": {
                "enabled": bias_type != "none",
                "bias_type": "2d" if bias_type == "none" else bias_type,
                "window_size": [window, window],
                "init_std": 0.02,
                "learnable": True,
                "mode": "clip",
                "shift_windows": False,
            },
        },
        "optim": {"name": "adamw", "lr": lr, "weight_decay": 0.05},
        "trainer": {"epochs": epochs},
    }


def write_run(
    run_dir: Path, config: dict, accuracies: list[float], status: str = "completed", cost: dict | None = None
) -> None:
    """config.yaml, metrics.jsonl, summary.json and bias/offset_maps.pt as training writes them; `cost` adds
    summary keys such as num_params, train_images_per_s, wall_s."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rows = []
    for epoch, acc in enumerate(accuracies):
        loss = 2.3 * (1 - acc) + 0.05
        rows.append(
            {
                "epoch": epoch,
                "train_loss": loss,
                "train_accuracy": acc,
                "val_loss": loss + 0.1,
                "val_accuracy": acc,
                "learning_rate": config["optim"]["lr"],
                "epoch_time": 1.5,
            }
        )
    if status != "completed":
        rows[-1]["status"] = status
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    best = max(range(len(accuracies)), key=lambda i: accuracies[i])
    summary = {
        "status": status,
        "reason": "",
        "best_val_accuracy": accuracies[best],
        "best_epoch": best,
        "epochs_run": len(accuracies),
        "val_accuracy": accuracies[-1],
        "val_loss": rows[-1]["val_loss"],
        "train_loss": rows[-1]["train_loss"],
        "run_dir": str(run_dir),
        "wandb_run_id": None,
        **(cost or {}),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    rpb = config["model"]["rpb"]
    if rpb["enabled"]:
        w = rpb["window_size"][0]
        d = torch.arange(-(w - 1), w, dtype=torch.float32)
        dist = (d[:, None] ** 2 + d[None, :] ** 2).sqrt()  # (2W-1, 2W-1)
        # Each head prefers a different distance so the heatmaps differ visibly.
        maps = {i: torch.stack([torch.exp(-dist / (1.0 + h + i)) for h in range(HEADS)]) for i in range(DEPTH)}
        (run_dir / "bias").mkdir(exist_ok=True)
        torch.save(maps, run_dir / "bias" / "offset_maps.pt")


def make_ablation(root: Path, windows=(3, 5, 7), seeds=(0, 1, 2), name: str = "abl", baseline: bool = True) -> Path:
    """A finished ablation study (kind=ablation) whose accuracy grows with the window, with a no-bias setting
    (`baseline`) below them all; every run records its cost (more parameters and time for larger windows)."""
    path = root / f"{name}.journal"
    study = optuna.create_study(study_name=name, storage=journal(path), direction="maximize")
    study.set_user_attr("kind", "ablation")
    rng = random.Random(0)
    cells = [(w, "2d") for w in windows] + ([(windows[0], "none")] if baseline else [])
    dists = {
        "model.rpb.window_size": CategoricalDistribution([f"{w}x{w}" for w in windows]),
        "model.rpb.enabled": CategoricalDistribution([True, False]),
        "seed": CategoricalDistribution(list(seeds)),
    }
    for window, bias in cells:
        for seed in seeds:
            final = (0.55 if bias == "none" else 0.6 + 0.04 * window) + rng.uniform(-0.02, 0.02)
            accs = [final * (1 - math.exp(-(e + 1))) for e in range(3)]
            run_dir = root / name / f"trial-{len(study.trials)}"
            table = 0 if bias == "none" else ((2 * window - 1) ** 2 + 3) * HEADS * DEPTH
            cost = {"num_params": 30_000 + table, "train_images_per_s": 600 - 10 * window, "wall_s": 20 + window}
            write_run(run_dir, run_config(window, seed, bias_type=bias), accs, cost=cost)
            study.add_trial(
                optuna.trial.create_trial(
                    params={
                        "model.rpb.window_size": f"{window}x{window}",
                        "model.rpb.enabled": bias != "none",
                        "seed": seed,
                    },
                    distributions=dists,
                    value=max(accs),
                    intermediate_values=dict(enumerate(accs)),
                    user_attrs={
                        "run_dir": str(run_dir),
                        "wandb_run_id": f"w{len(study.trials)}",
                        "status": "completed",
                        "reason": "",
                    },
                )
            )
    return path


def make_sweep(root: Path, n: int = 8, name: str = "swp") -> Path:
    """A finished sweep with completed and pruned trials over window size and learning rate."""
    path = root / f"{name}.journal"
    study = optuna.create_study(study_name=name, storage=journal(path), direction="maximize")
    study.set_user_attr("kind", "sweep")
    rng = random.Random(1)
    dists = {  # conf/sweep/default.yaml's space
        "model.rpb.window_size": CategoricalDistribution([3, 5, 7]),
        "optim.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "optim.weight_decay": FloatDistribution(1e-3, 0.2, log=True),
        "model.drop_rate": FloatDistribution(0.0, 0.3),
        "model.rpb.init_std": FloatDistribution(1e-3, 0.1, log=True),
    }
    for number in range(n):
        window, lr = rng.choice([3, 5, 7]), 10 ** rng.uniform(-4, -2)
        pruned = number % 3 == 2
        accs = [0.5 + 0.03 * window + 0.1 * e - 20 * abs(lr - 3e-3) for e in range(1 if pruned else 3)]
        run_dir = root / name / f"trial-{number}"
        status = "pruned" if pruned else "completed"
        write_run(run_dir, run_config(window, 42, lr=lr), accs, status=status)
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
                params={
                    "model.rpb.window_size": window,
                    "optim.lr": lr,
                    "optim.weight_decay": 10 ** rng.uniform(-3, -0.7),
                    "model.drop_rate": rng.uniform(0.0, 0.3),
                    "model.rpb.init_std": 10 ** rng.uniform(-3, -1),
                },
                distributions=dists,
                value=None if pruned else max(accs),
                intermediate_values=dict(enumerate(accs)),
                user_attrs={"run_dir": str(run_dir), "wandb_run_id": None, "status": status, "reason": ""},
            )
        )
    return path


ABLATION_DISTS = {"window_size": CategoricalDistribution([3, 5, 7]), "seed": CategoricalDistribution([0, 1])}


def add_ablation_trial(
    study: optuna.Study,
    root: Path,
    window: int,
    seed: int,
    accuracies: list[float] | None,
    state: optuna.trial.TrialState = optuna.trial.TrialState.COMPLETE,
    status: str = "completed",
    retry_of: int | None = None,
) -> optuna.trial.FrozenTrial:
    """One trial of an ablation study with its run folder (none when `accuracies` is None), as rpb-ablate and
    sweeps.recovery leave it: a retry names the attempt it replaces (user_attrs retry_of, system_attrs retry_history)."""
    number = len(study.get_trials(deepcopy=False))
    user_attrs: dict = {"status": status, "reason": ""}
    system_attrs: dict = {}
    if accuracies is not None:
        run_dir = root / f"trial-{number}"
        run_status = {"stale": "running"}.get(status, status)  # a killed run never wrote its final status
        write_run(run_dir, run_config(window, seed), accuracies, status=run_status)
        user_attrs |= {"run_dir": str(run_dir), "wandb_run_id": f"w{number}"}
    if retry_of is not None:
        old = study.get_trials(deepcopy=False)[retry_of]
        user_attrs["retry_of"] = retry_of
        system_attrs = {
            "failed_trial": retry_of,
            "retry_history": [*old.system_attrs.get("retry_history", []), retry_of],
        }
    finished = state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            params={"window_size": window, "seed": seed},
            distributions=ABLATION_DISTS,
            value=max(accuracies) if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values=dict(enumerate(accuracies)) if accuracies and finished else {},
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )
    return study.get_trials(deepcopy=False)[-1]


def retried_ablation(root: Path) -> optuna.Study:
    """An in-memory ablation (windows 3, 5, 7 x seeds 0, 1) with every kind of trial a real one can hold:

    0  (3, 0) FAIL stale       killed after 1 epoch (0.20), retried as trial 6
    1  (3, 1) COMPLETE 0.70    2  (5, 0) COMPLETE 0.80    3  (5, 1) COMPLETE 0.82
    4  (7, 0) PRUNED           stopped after 1 epoch (0.30)
    5  (7, 1) FAIL failed      raised after 1 epoch (0.25), retried as trial 8 (still waiting)
    6  (3, 0) COMPLETE 0.75    the retry of trial 0 (resumed: its first epoch is trial 0's)
    7  (5, 0) RUNNING          a second worker's trial, not finished
    8  (7, 1) WAITING          the retry of trial 5
    """
    state = optuna.trial.TrialState
    study = optuna.create_study(study_name="retried", direction="maximize")
    study.set_user_attr("kind", "ablation")
    add_ablation_trial(study, root, 3, 0, [0.20], state.FAIL, "stale")
    add_ablation_trial(study, root, 3, 1, [0.50, 0.60, 0.70])
    add_ablation_trial(study, root, 5, 0, [0.60, 0.70, 0.80])
    add_ablation_trial(study, root, 5, 1, [0.62, 0.72, 0.82])
    add_ablation_trial(study, root, 7, 0, [0.30], state.PRUNED, "pruned")
    add_ablation_trial(study, root, 7, 1, [0.25], state.FAIL, "failed")
    add_ablation_trial(study, root, 3, 0, [0.20, 0.60, 0.75], retry_of=0)
    add_ablation_trial(study, root, 5, 0, None, state.RUNNING, "running")
    add_ablation_trial(study, root, 7, 1, None, state.WAITING, "", retry_of=5)
    return study
