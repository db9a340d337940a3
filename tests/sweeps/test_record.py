"""A study's record stays true: no parameter set repeated, grids run cell by cell, a study's identity is checked,
a finished study says so, pruned trials are ranked apart (issue: studies you can trust)."""

from __future__ import annotations

import re

import optuna
import pytest
from optuna.trial import TrialState

from experiments.config_errors import ConfigError
from sweeps.config import check_sweep, sampler_factory
from sweeps.objective import DuplicateTrial, Objective
from sweeps.samplers import TrialSeededSampler, trial_seed
from sweeps.space import SweepConfigError
from sweeps.study import QUEUED_ATTR, StudyAlreadyDone, open_study, prepare_study, run_study
from sweeps.summary import print_summary, ranked_trials
from tests.sweeps import fake_train
from tests.sweeps.helpers import run_cli

SMALL_GRID = (
    "sweep.study_name=grid",
    "sweep.sampler.name=grid",
    "sweep.pruner.name=none",
    "sweep.n_trials=null",
    "sweep.enqueue_defaults=false",
    "trainer.epochs=2",
    "~sweep.space.optim",
    "~sweep.space.model.drop_rate",
    "~sweep.space.model.rpb.init_std",
    "sweep.space.model.rpb.window_size={type: categorical, choices: [3, 5, 7]}",
    "+sweep.space.seed={type: categorical, choices: [0, 1]}",
)


def _keys(study):
    return [tuple(sorted((k, repr(v)) for k, v in t.params.items())) for t in study.get_trials()]


def test_adding_trials_to_a_study_repeats_no_parameter_set(compose_sweep):
    """The same command with a larger n_trials: new trials draw new sets (the old seeding restarted the random
    sequence, so the first new trial repeated trial 1)."""
    run_study(compose_sweep("sweep.n_trials=3", "sweep.pruner.name=none"))
    study = run_study(compose_sweep("sweep.n_trials=8", "sweep.pruner.name=none"))
    keys = _keys(study)
    assert len(keys) == 8 and len(set(keys)) == 8


def test_same_seed_same_trials_whether_run_at_once_or_continued(compose_sweep, tmp_path):
    once = run_study(compose_sweep("sweep.n_trials=7", "sweep.pruner.name=none", "sweep.study_name=once"))
    run_study(compose_sweep("sweep.n_trials=3", "sweep.pruner.name=none", "sweep.study_name=twice"))
    twice = run_study(compose_sweep("sweep.n_trials=7", "sweep.pruner.name=none", "sweep.study_name=twice"))
    assert [t.params for t in once.get_trials()] == [t.params for t in twice.get_trials()]
    other = run_study(compose_sweep("sweep.n_trials=7", "sweep.pruner.name=none", "sweep.study_name=other",
                                    "sweep.sampler.seed=1"))  # fmt: skip
    assert [t.params for t in other.get_trials()][1:] != [t.params for t in once.get_trials()][1:]


def test_a_study_stopped_inside_a_trial_and_continued_runs_the_same_trials(compose_sweep):
    """Ctrl-C in the middle of trial 2, then the same command: trial 2's retry takes number 3 but no draw, so every
    later trial gets the parameters (and the pruning decision) it had in the study that ran at once. Seeding by
    trial number shifted every later trial by one and drew other points."""
    once = run_study(compose_sweep("sweep.n_trials=8", "sweep.study_name=once"))
    interrupted = []

    def ctrl_c_in_trial_2(cfg, on_epoch_end=None):
        def hook(epoch, metrics):
            decision = on_epoch_end(epoch, metrics)
            if cfg.run_dir.endswith("trial-2") and epoch == 2 and not interrupted:
                interrupted.append(epoch)
                raise KeyboardInterrupt
            return decision

        return fake_train.train(cfg, hook)

    cfg = compose_sweep("sweep.n_trials=8", "sweep.study_name=twice")
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, train_fn=ctrl_c_in_trial_2)
    twice = run_study(cfg)
    stopped, *_ = [t for t in twice.get_trials() if t.state == TrialState.FAIL]
    assert stopped.number == 2 and stopped.user_attrs["status"] == "interrupted"
    finished = [t for t in twice.get_trials() if t.state != TrialState.FAIL]
    assert finished[2].user_attrs["retry_of"] == 2
    assert [t.params for t in finished] == [t.params for t in once.get_trials()]
    assert [t.state for t in finished] == [t.state for t in once.get_trials()]
    assert any(t.state == TrialState.PRUNED for t in finished)  # the pruner took part
    # The draw index is recorded where it is not the trial's number: on the retry (its original's) and after it.
    draws = {t.number: t.system_attrs.get("draw_index") for t in twice.get_trials()}
    assert draws == {0: None, 1: None, 2: None, 3: 2, **{n: n - 1 for n in range(4, 9)}}


@pytest.mark.parametrize("name", ["tpe", "random", "gp", "cmaes"])
def test_every_sampler_draws_only_new_points_of_a_small_space(compose_sweep, name):
    """A 3-point space and n_trials=5: each point runs once, then the study is whole (nothing is drawn twice)."""
    cfg = compose_sweep(
        f"sweep.sampler.name={name}",
        "sweep.sampler.n_startup_trials=1",
        "sweep.pruner.name=none",
        "sweep.n_trials=5",
        "sweep.enqueue_defaults=false",
        "~sweep.space.optim",
        "~sweep.space.model.drop_rate",
        "~sweep.space.model.rpb.init_std",
    )
    study = run_study(cfg)
    points = sorted(t.params["model.rpb.window_size"] for t in study.get_trials())
    assert points == ["3x3", "5x5", "7x7"]
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())
    with pytest.raises(StudyAlreadyDone, match="every point of its finite search space"):
        run_study(cfg)


def test_trial_seeds_depend_on_seed_number_and_attempt_only():
    assert trial_seed(0, 5) == trial_seed(0, 5)
    assert len({trial_seed(0, n, a) for n in range(20) for a in range(3)}) == 60
    assert trial_seed(0, 5) != trial_seed(1, 5)
    assert trial_seed(None, 5) is None


def test_sampler_redraws_a_held_set(compose_sweep):
    """Trial 1's first draw is made to equal trial 0's params: the sampler draws again with another seed."""
    sweep, _base, dims = check_sweep(compose_sweep("sweep.sampler.name=random"))
    # what trial 1 draws at its first attempt (random sampling does not depend on the history)
    probe = optuna.create_study(sampler=TrialSeededSampler(sampler_factory(sweep), dims, seed=0))
    probe.enqueue_trial({})  # trial 0 (params drawn at attempt 0 of trial 0)
    probe.ask()
    t1 = probe.ask()  # trial 1, attempt 0
    drawn = {d.path: d.suggest(t1) for d in dims}
    # a study whose trial 0 holds exactly that set
    held = optuna.create_study(sampler=TrialSeededSampler(sampler_factory(sweep), dims, seed=0))
    held.add_trial(optuna.create_trial(params=drawn, distributions={d.path: d.distribution() for d in dims}, value=0))
    again = held.ask()  # trial 1 again; its attempt-0 draw is held, so it must differ
    assert again.number == 1
    params = {d.path: d.suggest(again) for d in dims}
    assert params != drawn


def test_a_racing_duplicate_fails_before_it_trains(compose_sweep):
    sweep, base, dims = check_sweep(compose_sweep())
    params = {"optim.lr": 1e-3, "optim.weight_decay": 0.05, "model.drop_rate": 0.1,
              "model.rpb.window_size": "7x7", "model.rpb.init_std": 0.02}  # fmt: skip

    class Same(optuna.samplers.RandomSampler):  # a sampler that lost a race: it proposes a held set
        def sample_independent(self, study, trial, name, dist):
            return params[name]

    study = optuna.create_study(sampler=Same())
    study.add_trial(
        optuna.create_trial(params=params, distributions={d.path: d.distribution() for d in dims}, value=0.5)
    )
    trained = []
    objective = Objective(base, sweep, dims, lambda cfg, on_epoch_end=None: trained.append(cfg) or {})
    study.optimize(objective, n_trials=1, catch=(DuplicateTrial,))
    dup = study.trials[1]
    assert dup.state == TrialState.FAIL and dup.user_attrs["status"] == "duplicate"
    assert dup.user_attrs["reason"] == "trial 0 holds the same parameters; not trained again"
    assert trained == []


def test_a_duplicate_drawn_by_a_trial_still_drawing_when_the_sampler_read_fails_before_it_trains(compose_sweep):
    """The refusal uses the study as the sampler read it in the trial (no read of its own), and reads again when an
    earlier trial was still drawing its parameters then: here trial 0 (another worker) writes the set trial 1
    drew after trial 1's sampler read the study."""
    from sweeps.optuna_internals import storage_of, trial_id
    from sweeps.samplers import unsettled

    sweep, base, dims = check_sweep(compose_sweep())
    params = {"optim.lr": 1e-3, "optim.weight_decay": 0.05, "model.drop_rate": 0.1,
              "model.rpb.window_size": "7x7", "model.rpb.init_std": 0.02}  # fmt: skip
    dists = {d.path: d.distribution() for d in dims}
    names = [d.path for d in dims]

    class Racing(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, dist):
            seen = study._get_trials(deepcopy=False, use_cache=True)  # the trial's one read, as TPE makes it
            if name == names[-1]:  # trial 0 finishes its draw now, after that read
                assert unsettled(seen, names, trial.number)
                for n, value in params.items():
                    storage_of(study).set_trial_param(trial_id(other), n, dists[n].to_internal_repr(value), dists[n])
            return params[name]

    study = optuna.create_study(sampler=Racing())
    other = study.ask()  # trial 0: another worker's, RUNNING and still without params
    trained = []
    objective = Objective(base, sweep, dims, lambda cfg, on_epoch_end=None: trained.append(cfg) or {})
    study.optimize(objective, n_trials=1, catch=(DuplicateTrial,))
    dup = study.trials[1]
    assert (
        dup.state == TrialState.FAIL
        and dup.user_attrs["reason"] == "trial 0 holds the same parameters; not trained again"
    )
    assert trained == []


def test_a_later_trial_waits_for_an_earlier_one_still_drawing_and_is_refused_when_it_draws_the_same_set(
    compose_sweep,
):
    """Two workers drawing the same set of a finite space at once: trial 1 has drawn, trial 0 (another worker) is
    still drawing and writes its set 0.3 s later. Trial 1 waits for it (`Objective._settled`) and is refused
    before it trains; reading once, it used to find trial 0 without a set and train the same one."""
    import threading
    import time

    from sweeps.optuna_internals import storage_of, trial_id

    sweep, base, dims = check_sweep(
        compose_sweep(
            "~sweep.space.optim", "~sweep.space.model.drop_rate", "~sweep.space.model.rpb.init_std",
            "sweep.space.model.rpb.window_size={type: categorical, choices: [3, 7]}",
        )
    )  # fmt: skip
    params = {"model.rpb.window_size": 7}
    dists = {d.path: d.distribution() for d in dims}

    class Same(optuna.samplers.RandomSampler):  # both workers' samplers draw window 7
        def sample_independent(self, study, trial, name, dist):
            return params[name]

    study = optuna.create_study(sampler=Same())
    other = study.ask()  # trial 0: another worker's, RUNNING and still drawing

    def draws_late():
        time.sleep(0.3)  # after trial 1 drew and read the study
        for n, value in params.items():
            storage_of(study).set_trial_param(trial_id(other), n, dists[n].to_internal_repr(value), dists[n])

    writer = threading.Thread(target=draws_late)
    writer.start()
    trained = []
    objective = Objective(base, sweep, dims, lambda cfg, on_epoch_end=None: trained.append(cfg) or {})
    study.optimize(objective, n_trials=1, catch=(DuplicateTrial,))
    writer.join()
    dup = study.trials[1]
    assert dup.state == TrialState.FAIL and dup.user_attrs["status"] == "duplicate"
    assert dup.user_attrs["reason"] == "trial 0 holds the same parameters; not trained again"
    assert trained == []


def test_unsettled_means_an_earlier_unfinished_trial_without_its_full_set():
    from sweeps.samplers import unsettled

    dist = optuna.distributions.FloatDistribution(0, 1)
    full = optuna.create_trial(
        state=TrialState.RUNNING, params={"a": 0.5, "b": 0.5}, distributions={"a": dist, "b": dist}
    )
    half = optuna.create_trial(state=TrialState.RUNNING, params={"a": 0.5}, distributions={"a": dist})
    failed = optuna.create_trial(state=TrialState.FAIL, params={"a": 0.5}, distributions={"a": dist})
    for number, t in enumerate((full, half, failed)):
        t.number = number
    assert not unsettled([full, failed], ["a", "b"], before=5)  # a finished trial's params never change
    assert unsettled([full, half], ["a", "b"], before=5)
    assert not unsettled([full, half], ["a", "b"], before=1)  # a later trial gives way itself
    half.user_attrs = {"status": "duplicate"}
    assert not unsettled([half], ["a", "b"], before=5)  # a refused one holds nothing


def test_grid_cells_are_enqueued_once_and_run_once(compose_sweep):
    study = run_study(compose_sweep(*SMALL_GRID))
    cells = sorted((t.params["model.rpb.window_size"], t.params["seed"]) for t in study.get_trials())
    assert cells == [(w, s) for w in (3, 5, 7) for s in (0, 1)]
    assert sorted(t.user_attrs["cell"] for t in study.get_trials()) == list(range(6))
    assert study.user_attrs[QUEUED_ATTR] == 6
    # the order is the seed's, not the listing's, and the same for the same seed
    again = run_study(compose_sweep(*SMALL_GRID, "sweep.study_name=grid2"))
    assert [t.params for t in again.get_trials()] == [t.params for t in study.get_trials()]


def test_a_joining_worker_repairs_a_grid_whose_creator_died(compose_sweep):
    """The creator enqueued 2 of 6 cells and died: the next command enqueues the 4 missing ones, not all 6."""
    cfg = compose_sweep(*SMALL_GRID)
    checked = check_sweep(cfg)
    from sweeps.storage import build_storage

    storage = build_storage(checked.sweep)
    optuna.create_study(study_name="grid", storage=storage, direction="maximize")
    study = open_study(checked, storage)
    study.set_user_attr("creator", {"host": __import__("socket").gethostname(), "pid": 2**22 + 7, "start": None})
    study.enqueue_trial({"model.rpb.window_size": 3, "seed": 0}, user_attrs={"cell": 0})
    study.enqueue_trial({"model.rpb.window_size": 3, "seed": 1}, user_attrs={"cell": 1})
    study = prepare_study(cfg)
    assert sorted(t.user_attrs["cell"] for t in study.get_trials()) == list(range(6))


def test_a_changed_sweep_is_refused_naming_what_changed(compose_sweep):
    run_study(compose_sweep("sweep.n_trials=2"))
    cases = {
        "+sweep.space.model.drop_path_rate={type: float, low: 0.0, high: 0.2}": "sweep.space.model.drop_path_rate added",
        "+sweep.fixed.optim.lr=0.003": "sweep.space.optim.lr removed, sweep.fixed.optim.lr added",
        "sweep.metric=train_accuracy": "sweep.metric val_accuracy -> train_accuracy",
        "trainer.epochs=7": "trainer.epochs 35 -> 7",
        "sweep.value=last": "sweep.value best -> last",
    }
    for override, named in cases.items():
        with pytest.raises(SweepConfigError, match="was run with another config") as err:
            run_study(compose_sweep("sweep.n_trials=3", override))
        assert named in str(err.value), str(err.value)
        assert "sweep.allow_space_change=true" in str(err.value)
    with pytest.raises(SweepConfigError, match=r"sweep\.direction=minimize contradicts sweep\.metric=val_accuracy"):
        run_study(compose_sweep("sweep.n_trials=3", "sweep.direction=minimize"))
    # a metric that turns the direction cannot change the study's, even where a changed space is allowed
    with pytest.raises(SweepConfigError, match="created to maximize"):
        run_study(compose_sweep("sweep.n_trials=3", "sweep.metric=val_loss", "sweep.allow_space_change=true"))
    # keys that change how a trial runs, not what it computes, are not part of the identity
    study = run_study(compose_sweep("sweep.n_trials=3", "trainer.progress_bar=true", "tracker.wandb.mode=disabled"))
    assert len(study.trials) == 3


def test_allow_space_change_is_recorded_on_the_study(compose_sweep):
    run_study(compose_sweep("sweep.n_trials=2"))
    study = run_study(compose_sweep("sweep.n_trials=3", "trainer.epochs=7", "sweep.allow_space_change=true"))
    assert study.user_attrs["identity_changes"] == [{"from_trial": 2, "changes": ["trainer.epochs 35 -> 7"]}]
    assert study.user_attrs["identity"]["base"]["trainer.epochs"] == 7
    assert len(study.trials) == 3
    with pytest.raises(ConfigError, match=r"trainer\.epochs 7 -> 35"):  # the new config is the study's now
        run_study(compose_sweep("sweep.n_trials=4"))


def test_pruned_trials_are_not_ranked_among_complete_ones(compose_sweep, capsys):
    cfg = compose_sweep("sweep.n_trials=8", "sweep.sampler.n_startup_trials=2")
    study = run_study(cfg)
    complete, pruned = ranked_trials(study, "maximize")
    assert pruned and complete, "the fixture needs both complete and pruned trials"
    assert all(t.state == TrialState.COMPLETE for t in complete)
    assert [t.value for t in complete] == sorted((t.value for t in complete), reverse=True)
    print_summary(check_sweep(cfg), study)
    out = capsys.readouterr().out
    ranked, _, apart = out.partition("Pruned trials (stopped early, not ranked)")
    assert apart, out
    top = ranked.split("complete trials, ranked by")[1]
    assert "pruned" not in top.split("\n", 2)[2]  # no pruned row in the ranked table


@pytest.mark.slow
def test_rerunning_a_finished_study_says_so_in_one_sentence(tmp_path):
    first = run_cli(tmp_path, "sweep.n_trials=2", "sweep.study_name=done")
    assert first.returncode == 0, first.stderr
    again = run_cli(tmp_path, "sweep.n_trials=2", "sweep.study_name=done", "sweep.workers=2")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        "rpb-sweep: study 'done' already holds 2 of 2 finished trials: raise sweep.n_trials or choose another "
        "sweep.study_name."
    )
    changed = run_cli(tmp_path, "sweep.n_trials=3", "sweep.study_name=done", "trainer.epochs=9")
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1
    assert "trainer.epochs 35 -> 9" in changed.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_grid_with_two_workers_runs_each_cell_once(compose_sweep, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.05")
    study = run_study(compose_sweep(*SMALL_GRID, "sweep.workers=2"), fake_train.train)
    cells = sorted((t.params["model.rpb.window_size"], t.params["seed"]) for t in study.get_trials())
    assert cells == [(w, s) for w in (3, 5, 7) for s in (0, 1)]
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())
    assert len({t.user_attrs["worker"]["pid"] for t in study.get_trials()}) == 2


def test_the_sweep_is_checked_once_per_command(compose_sweep, monkeypatch, capsys):
    """rpb-sweep checks its sweep once and passes the result to the worker, the summary and best.yaml."""
    import sweeps.cli
    import sweeps.config

    calls = []
    real = sweeps.config.parse_space
    monkeypatch.setattr(sweeps.config, "parse_space", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert sweeps.cli.sweep_main(compose_sweep("sweep.n_trials=2")) == 0
    assert len(calls) == 1
    assert "Best config:" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_worker_joining_a_running_grid_takes_the_cells_left(tmp_path):
    """A second command started while the first runs the grid: no cell enqueued again, each cell run once."""
    import time

    from sweeps.storage import build_storage
    from tests.sweeps.helpers import popen_cli

    grid = [o for o in SMALL_GRID if not o.startswith("+sweep.space.seed")]
    grid.append("+sweep.space.seed={type: categorical, choices: [0, 1, 2]}")
    gate = tmp_path / "second-started"  # the first command runs one cell, then waits until the second runs one
    first = popen_cli(tmp_path, *grid, env={"FAKE_TRAIN_SLEEP": "0.2", "FAKE_TRAIN_HOLD": str(gate)})
    journal = tmp_path / "sweeps" / "grid.journal"

    def pids(state=None):
        if not journal.exists():
            return set()
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        try:
            trials = optuna.load_study(study_name="grid", storage=storage).get_trials(states=state)
        except KeyError:
            return set()
        return {t.user_attrs["worker"]["pid"] for t in trials if "worker" in t.user_attrs}

    deadline = time.monotonic() + 90
    while not pids((TrialState.COMPLETE,)):  # until the first command has finished a cell
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
        time.sleep(0.2)
    second = popen_cli(tmp_path, *grid, env={"FAKE_TRAIN_SLEEP": "0.2"})
    deadline = time.monotonic() + 90
    while len(pids()) < 2:  # until the second command has taken a cell
        assert second.poll() is None and time.monotonic() < deadline, second.stdout.read()
        time.sleep(0.2)
    gate.touch()
    out, out2 = first.communicate(timeout=120)[0], second.communicate(timeout=120)[0]
    assert first.returncode == 0 and second.returncode == 0, out + out2
    from experiments.config import compose_config
    from sweeps.config import check_sweep as _check
    from tests.sweeps.helpers import sweep_overrides

    cfg = compose_config(sweep_overrides(tmp_path, *grid), config_name="sweep")
    study = optuna.load_study(study_name="grid", storage=build_storage(_check(cfg).sweep, heartbeat=False))
    cells = sorted((t.params["model.rpb.window_size"], t.params["seed"]) for t in study.get_trials())
    assert cells == [(w, s) for w in (3, 5, 7) for s in (0, 1, 2)], cells
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())
    workers = {t.user_attrs["worker"]["pid"] for t in study.get_trials()}
    assert len(workers) == 2, "the second command ran no cell"


def _study_with_cells(compose_sweep):
    cfg = compose_sweep(*SMALL_GRID)
    return cfg, prepare_study(cfg)


def test_a_trial_no_worker_recorded_itself_on_is_retried_after_the_grace_period(compose_sweep):
    """A worker killed between taking a cell and its first write leaves no pid and no heartbeat: the cell is failed
    after sweep.grace_period and retried, not waited for for ever."""
    from sweeps.recovery import fail_dead_worker_trials

    _cfg, study = _study_with_cells(compose_sweep)
    taken = study.get_trials(states=(TrialState.WAITING,))[0]
    study._storage.set_trial_state_values(taken._trial_id, TrialState.RUNNING)  # popped, then the worker died
    assert fail_dead_worker_trials(study, max_retry=2, grace_period=60) == []  # too young to tell
    assert fail_dead_worker_trials(study, max_retry=2, grace_period=0) == [taken.number]  # past its grace period
    failed = study.trials[taken.number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["status"] == "stale"
    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING and retry.user_attrs["cell"] == taken.user_attrs["cell"]
    assert retry.system_attrs["retry_history"] == [taken.number]


def test_a_stale_trial_without_its_retry_is_repaired_once(compose_sweep):
    """The process that failed a stale trial died before enqueuing its retry: the next start enqueues it."""
    from sweeps.recovery import requeue_unretried_trials

    _cfg, study = _study_with_cells(compose_sweep)
    taken = study.get_trials(states=(TrialState.WAITING,))[0]
    storage = study._storage
    storage.set_trial_state_values(taken._trial_id, TrialState.RUNNING)
    storage.set_trial_user_attr(taken._trial_id, "status", "stale")
    storage.set_trial_state_values(taken._trial_id, TrialState.FAIL)
    assert requeue_unretried_trials(study, max_retry=2) == []  # just failed: its reaper may still enqueue
    assert requeue_unretried_trials(study, max_retry=2, settle_s=0) == [taken.number]
    assert requeue_unretried_trials(study, max_retry=2, settle_s=0) == []  # once
    assert study.trials[-1].user_attrs["cell"] == taken.user_attrs["cell"]


def test_a_cell_queued_twice_trains_once(compose_sweep):
    """Two copies of one cell in the queue (a repair race): the later one fails as a duplicate before training."""
    cfg, study = _study_with_cells(compose_sweep)
    first = study.get_trials(states=(TrialState.WAITING,))[0]
    study.enqueue_trial(first.system_attrs["fixed_params"], user_attrs={"cell": first.user_attrs["cell"]})
    sweep, base, dims = check_sweep(cfg)
    trained = []

    def train(c, on_epoch_end=None):
        trained.append(c.run_dir)
        return fake_train.train(c, on_epoch_end)

    study.optimize(Objective(base, sweep, dims, train), n_trials=7, catch=(DuplicateTrial,))
    dup = study.trials[-1]
    assert dup.state == TrialState.FAIL and dup.user_attrs["status"] == "duplicate"
    assert f"trial {first.number} already holds cell" in dup.user_attrs["reason"]
    assert len(trained) == 6


def test_a_grid_names_each_trial_s_place_among_its_cells(compose_sweep, capsys):
    """A cell study (grid, ablation) has no n_trials: its lines count its cells ("trial 4, 5 of 6")."""
    run_study(compose_sweep(*SMALL_GRID))
    out = capsys.readouterr().out
    assert "of 6] started" in out and re.search(r"trial \d, 6 of 6 complete", out), out
    assert not re.search(r"\[trial \d, \d\] ", out)
