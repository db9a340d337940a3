"""Off the default path: every metric x pruner, on both storages, a study whose worker is killed mid-trial and run again
ends with the same record as the same study run without a kill (on a journal file): trial values, states, best
trial and best.yaml.

The killed run is a forked copy of this process running `run_study`: its train_fn SIGKILLs it right after a
trial reported epoch 3 (a machine dying), then the same study is run again here, which fails that trial, retries
it from its checkpoint and completes the study. The trainer's curves are not monotone, so a value computed from the
wrong epochs (the retry's alone, or the last) would differ from the straight run's.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from experiments.config import compose_config
from experiments.metrics import METRICS
from sweeps.study import run_study
from sweeps.summary import write_best_config
from tests.sweeps.fake_train import _save_state
from tests.sweeps.helpers import run_cli, sweep_overrides

pytestmark = pytest.mark.slow

EPOCHS, N_TRIALS, KILL_EPOCH = 5, 6, 3
SHAPE = (0.55, 0.9, 0.7, 0.8, 0.6)  # per epoch: the best epoch (2) comes before the kill (3), the last is worse
_kill: dict[str, int] = {}  # set in the forked child only: SIGKILL after trial >= "trial" reports "epoch"


def curve_train(cfg, on_epoch_end=None) -> dict:
    """A fake `train` (the training contract: run folder, checkpoint each epoch, resume) with non-monotone curves."""
    run_dir, start = Path(cfg.run_dir), 0
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.resume:
        start = json.loads((Path(cfg.resume) / "checkpoints/last/train_state.json").read_text())["epoch"]
    q = 1 - 0.3 * abs(math.log10(float(cfg.optim.lr)) + 2.5)
    trial = int(cfg.tracker.extra_config.trial_number)
    status, epoch = "completed", start
    for epoch in range(start + 1, int(cfg.trainer.epochs) + 1):
        acc = q * SHAPE[epoch - 1]
        metrics = {"epoch": epoch, "val_accuracy": acc, "val_loss": 1.2 - acc,
                   "train_accuracy": 0.9 * acc + 0.05, "train_loss": 1.1 - 0.9 * acc}  # fmt: skip
        _save_state(run_dir, epoch)
        decision = on_epoch_end(epoch, dict(metrics)) if on_epoch_end else None
        if _kill and trial >= _kill["trial"] and epoch == _kill["epoch"]:
            os.kill(os.getpid(), signal.SIGKILL)
        if decision is not None:
            status = decision
            break
    return {"status": status, "reason": "", "epochs_run": epoch, "run_dir": str(run_dir), "wandb_run_id": None}


KILL_ENV = "RPB_TEST_KILL_AT"  # "trial:epoch": killable_train SIGKILLs its process there


def killable_train(cfg, on_epoch_end=None):
    """experiments.train.train itself, SIGKILLed (in the command run with KILL_ENV only) right after trial >= 1
    reported epoch 3, before that epoch's checkpoint: the retry runs epoch 3 again, which its record holds."""
    from experiments.train import train

    trial = int(cfg.tracker.extra_config.trial_number)
    kill = dict(zip(("trial", "epoch"), map(int, os.environ[KILL_ENV].split(":")))) if KILL_ENV in os.environ else {}

    def report(epoch, metrics):
        decision = on_epoch_end(epoch, metrics)
        if kill and trial >= kill["trial"] and epoch == kill["epoch"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return decision

    return train(cfg, on_epoch_end=report)


TINY_REAL = ("model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.head_dim=null", "data.num_workers=0",
             "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.cpu=true",
             "trainer.heatmap_every_n_epochs=0", "trainer.threads=1")  # fmt: skip


def _overrides(metric: str, pruner: str, storage: str | None, name: str, *extra: str) -> list[str]:
    return [
        f"sweep.metric={metric}", f"sweep.pruner.name={pruner}", f"sweep.study_name={name}",
        f"sweep.storage={storage or 'null'}", f"sweep.n_trials={N_TRIALS}", f"trainer.epochs={EPOCHS}",
        "sweep.pruner.n_startup_trials=2", "sweep.pruner.n_warmup_steps=1", "sweep.enqueue_defaults=false",
        "sweep.sampler.n_startup_trials=3", "tracker.wandb.mode=disabled", "tracker.tensorboard.enabled=false",
        "sweep.heartbeat_interval=null", *extra,
    ]  # fmt: skip


def _cfg(out: Path, metric: str, pruner: str, storage: str | None, name: str, *extra: str, fake: bool = True):
    overrides = sweep_overrides(out, *_overrides(metric, pruner, storage, name, *extra), fake=fake)
    return compose_config(overrides, config_name="sweep")


def _killed_run(cfg, train_fn) -> None:
    _kill.update(trial=1, epoch=KILL_EPOCH)
    run_study(cfg, train_fn)
    os._exit(0)  # not reached when a trial got to the kill


def _record(study: optuna.Study) -> list[tuple]:
    """(params, state, value) of every finished trial, in trial order (failed attempts left out)."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return [(t.params, t.state, t.value) for t in sorted(done, key=lambda t: t.number)]


def _best_yaml(cfg, study: optuna.Study) -> dict:
    body = yaml.safe_load(write_best_config(cfg, study).read_text())
    body["tracker"]["extra_config"].pop("from_trial")  # a number: the killed study's retry shifted later numbers
    return body


def _kill_and_compare(straight_cfg, killed_cfg, train_fn, metric: str, kill=None) -> None:
    """Run the study straight, then killed inside a trial (`kill()`, else a forked copy of this process) and run
    again here; the two records must be the same."""
    straight = run_study(straight_cfg, train_fn)
    if kill is None:
        child = mp.get_context("fork").Process(target=_killed_run, args=(killed_cfg, train_fn), daemon=True)
        child.start()
        child.join(120)
        if child.is_alive():  # never leave a hung fork behind: the test session would wait for it at exit
            child.kill()
            child.join(10)
        assert child.exitcode == -signal.SIGKILL, "the forked run was not killed in a trial"
    else:
        kill()
    killed = run_study(killed_cfg, train_fn)

    failed = [t for t in killed.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["status"] == "stale"
    retry = next(t for t in killed.trials if t.user_attrs.get("retry_of") == failed[0].number)
    assert retry.user_attrs.get("resumed_from"), "the retry did not continue from the killed trial's checkpoint"
    assert sorted(retry.intermediate_values)[:KILL_EPOCH] == [1, 2, 3]  # the killed attempt's epochs are its own

    assert _record(killed) == _record(straight)
    assert killed.direction == straight.direction
    assert (killed.best_trial.params, killed.best_trial.value) == (straight.best_trial.params, straight.best_trial.value)
    assert _best_yaml(killed_cfg, killed) == _best_yaml(straight_cfg, straight)
    # the value is the best epoch in the metric's direction, not the last
    for t in straight.get_trials(states=(TrialState.COMPLETE,)):
        values = t.intermediate_values.values()
        assert t.value == (min(values) if metric.endswith("loss") else max(values))


PRUNERS = ("none", "median", "successive_halving", "hyperband")


def _combinations():
    """Every metric x pruner once, on the journal file or PostgreSQL in a checkerboard: each metric and each pruner
    runs on both storages (16 studies where the full product is 32; the storages differ below the pruner)."""
    for i, metric in enumerate(METRICS):
        for j, pruner in enumerate(PRUNERS):
            storage = ("journal", "postgres")[(i + j) % 2]
            marks = [pytest.mark.postgres] if storage == "postgres" else []
            yield pytest.param(metric, pruner, storage, marks=marks, id=f"{metric}-{pruner}-{storage}")


@pytest.mark.parametrize(("metric", "pruner", "storage"), list(_combinations()))
def test_a_killed_and_retried_study_keeps_the_record_of_one_run_straight(tmp_path, request, metric, pruner, storage):
    url = request.getfixturevalue("postgres_url") if storage == "postgres" else None
    name = f"{metric}-{pruner}-{os.getpid()}-{tmp_path.name}"[-60:]  # one name: Hyperband brackets hash it
    straight_cfg = _cfg(tmp_path / "straight", metric, pruner, None, name, "~sweep.space.model")  # own journal
    killed_cfg = _cfg(tmp_path / "killed", metric, pruner, url, name, "~sweep.space.model")
    _kill_and_compare(straight_cfg, killed_cfg, curve_train, metric)


def test_a_real_training_study_killed_before_a_checkpoint_keeps_its_record(tmp_path):
    """The same with experiments.train.train on a tiny model: killed after reporting epoch 3 and before saving it,
    retried from epoch 2's checkpoint (resume is exact), it ends with the straight study's values and best.yaml.
    The killed run is an rpb-sweep command of its own (a fork of a process that trained would share torch's
    thread pool and may hang)."""
    name = f"real-{os.getpid()}-{tmp_path.name}"[-60:]
    ov = _overrides("val_loss", "median", None, name, *TINY_REAL)
    straight_cfg = _cfg(tmp_path / "straight", "val_loss", "median", None, name, *TINY_REAL, fake=False)
    killed_cfg = _cfg(tmp_path / "killed", "val_loss", "median", None, name, *TINY_REAL, fake=False)

    def kill():
        done = run_cli(tmp_path / "killed", *ov, "sweep.train_fn=tests.sweeps.test_combinations:killable_train",
                       env={KILL_ENV: f"1:{KILL_EPOCH}"}, fake=False, timeout=300)  # fmt: skip
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]

    _kill_and_compare(straight_cfg, killed_cfg, killable_train, "val_loss", kill)
