"""The search space from config: parsing, checks, params into the training config."""

from __future__ import annotations

import optuna
import pytest

from sweeps.config import build_pruner, build_sampler, check_sweep, grid_cells, sampler_factory, study_class
from sweeps.optuna_internals import WorkerStudy
from sweeps.samplers import CellStudy, TrialSeededSampler
from sweeps.space import SweepConfigError, apply_params, config_params, grid_search_space, parse_window
from sweeps.validate import check_trial_values


def test_default_space_and_guide_defaults(compose_sweep):
    _sweep, base, dims = check_sweep(compose_sweep())
    paths = [d.path for d in dims]
    assert paths == ["optim.lr", "optim.weight_decay", "model.drop_rate", "model.rpb.window_size", "model.rpb.init_std"]
    lr = dims[0]
    assert (lr.type, lr.log) == ("float", True)
    # The defaults trial: the training guide's values, window as the matching choice.
    assert config_params(dims, base) == {
        "optim.lr": 2e-3,
        "optim.weight_decay": 0.05,
        "model.drop_rate": 0.0,
        "model.rpb.window_size": "7x7",
        "model.rpb.init_std": 0.02,
    }


def test_command_line_edits_space(compose_sweep):
    cfg = compose_sweep(
        "sweep.space.optim.lr={type: float, low: 1e-4, high: 1e-2, log: true}",
        "~sweep.space.model.rpb.init_std",
        "+sweep.space.model.depth={type: int, low: 1, high: 3}",
        "+sweep.fixed.optim.weight_decay=0.01",
    )
    _sweep, base, dims = check_sweep(cfg)
    paths = [d.path for d in dims]
    assert "model.rpb.init_std" not in paths and "optim.weight_decay" not in paths
    assert "model.depth" in paths
    trial_cfg = apply_params(base, {"model.depth": 3, "model.rpb.window_size": "3x5"}, {"optim.weight_decay": 0.01})
    assert trial_cfg.model.depth == 3 and list(trial_cfg.model.rpb.window_size) == [3, 5]
    assert trial_cfg.optim.weight_decay == 0.01
    # the base is not modified
    assert base.model.depth == 2 and list(base.model.rpb.window_size) == [7, 7] and base.optim.weight_decay == 0.05


def test_only_window_size_keys_are_windows(compose_sweep):
    """A fixed pair that is no window (optim.betas) is set as it is; window_size keys still take "HxW"."""
    cfg = compose_sweep("+sweep.fixed.optim.betas=[0.9,0.95]", "+sweep.fixed.model.rpb.window_size=3x5")
    sweep, base, dims = check_sweep(cfg)
    check_trial_values(base, sweep, dims)  # refused before: "[0.9, 0.95] is not a window size"
    trial_cfg = apply_params(base, {}, {"optim.betas": [0.9, 0.95], "model.rpb.window_size": "3x5"})
    assert list(trial_cfg.optim.betas) == [0.9, 0.95] and list(trial_cfg.model.rpb.window_size) == [3, 5]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("sweep.space.optim.lr={type: float, low: 1e-2, high: 1e-4, log: true}", "inverted range"),
        ("sweep.space.optim.lr={type: float, low: 1e-3, high: 1e-3}", "empty range"),
        ("sweep.space.optim.lr={type: float, low: 0, high: 1, log: true}", "log-scaled"),
        ("sweep.space.optim.lr={type: floot, low: 0, high: 1}", "type is 'floot'"),
        ("+sweep.space.optim.lrr={type: float, low: 0.1, high: 1}", "no key 'optim.lrr'"),
        ("sweep.space.model.rpb.window_size={type: categorical, choices: []}", "choices is empty"),
        ("sweep.sampler.name=tpee", "did you mean 'tpe'"),
        ("sweep.pruner.name=hyperbnd", "did you mean 'hyperband'"),
        ("sweep.metric=val_acc", "sweep.metric"),
    ],
)
def test_bad_sweep_is_one_sentence(compose_sweep, override, needle):
    with pytest.raises(SweepConfigError, match=needle) as info:
        check_sweep(compose_sweep(override, fake=False))  # the real train(): its metrics are known by name
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("sweep.space.model.rpb.window_size={type: categorical, choices: [3, 9x9]}", "'9x9' cannot be used"),
        ("sweep.space.model.drop_rate={type: float, low: 0.0, high: 1.5}", "bound 1.5 cannot be used"),
        ("model=rpb_vit_local", "'3x3' cannot be used"),  # local windows must divide the 7x7 grid
    ],
)
def test_values_the_model_refuses(compose_sweep, override, needle):
    cfg = compose_sweep(override)
    sweep, base, dims = check_sweep(cfg)
    with pytest.raises(SweepConfigError, match=needle):
        check_trial_values(base, sweep, dims)


def test_local_mode_windows_that_divide_the_grid(compose_sweep):
    cfg = compose_sweep("model=rpb_vit_local", "sweep.space.model.rpb.window_size={type: categorical, choices: [1, 7]}")
    sweep, base, dims = check_sweep(cfg)
    check_trial_values(base, sweep, dims)


def test_parse_window():
    assert parse_window(7) == [7, 7]
    assert parse_window("3x5") == [3, 5]
    assert parse_window([2, 4]) == [2, 4]
    with pytest.raises(SweepConfigError, match="not a window size"):
        parse_window("7by7")


def test_samplers_pruners_and_grid(compose_sweep):
    cfg = compose_sweep(
        "sweep.sampler.name=grid",
        "sweep.pruner.name=none",
        "~sweep.space.optim",
        "~sweep.space.model.drop_rate",
        "~sweep.space.model.rpb.init_std",
        "+sweep.space.seed={type: categorical, choices: [0, 1]}",
    )
    sweep, _base, dims = check_sweep(cfg)
    assert grid_search_space(dims) == {"model.rpb.window_size": ["3x3", "5x5", "7x7"], "seed": [0, 1]}
    # A grid's cells are enqueued trials (sweeps.samplers), run by a CellStudy; the study's sampler is never asked.
    assert study_class(sweep) is CellStudy
    assert grid_cells(sweep, dims)[:2] == [
        {"model.rpb.window_size": "3x3", "seed": 0},
        {"model.rpb.window_size": "3x3", "seed": 1},
    ]
    assert len(grid_cells(sweep, dims)) == 6
    assert isinstance(build_pruner(sweep, 4), optuna.pruners.NopPruner)
    with pytest.raises(SweepConfigError, match="grid cannot enumerate"):
        check_sweep(compose_sweep("sweep.sampler.name=grid"))
    for name, cls in [
        ("random", "RandomSampler"),
        ("cmaes", "CmaEsSampler"),
        ("gp", "GPSampler"),
        ("tpe", "TPESampler"),
    ]:
        sweep, _, dims = check_sweep(compose_sweep(f"sweep.sampler.name={name}"))
        sampler = build_sampler(sweep, dims)
        assert isinstance(sampler, TrialSeededSampler) and study_class(sweep) is WorkerStudy
        assert type(sampler_factory(sweep)(0)).__name__ == cls
    for name, cls in [
        ("median", "MedianPruner"),
        ("successive_halving", "SuccessiveHalvingPruner"),
        ("hyperband", "HyperbandPruner"),
    ]:
        sweep = check_sweep(compose_sweep(f"sweep.pruner.name={name}"))[0]
        assert isinstance(build_pruner(sweep, 4), getattr(optuna.pruners, cls))


def test_trial_config_names_its_wandb_run_and_flattens_the_window(compose_sweep, tmp_path):
    from sweeps.objective import TrialSpec, trial_config

    sweep, base, _dims = check_sweep(compose_sweep())
    spec = TrialSpec(number=3, params={"model.rpb.window_size": "5x5"}, run_dir=str(tmp_path / "t3"), wandb_id="abc")
    cfg = trial_config(base, sweep, spec)
    wb, extra = cfg.tracker.wandb, cfg.tracker.extra_config
    assert list(cfg.model.rpb.window_size) == [5, 5]
    assert (wb.group, wb.job_type, wb.name, wb.id) == (sweep.study_name, "trial", "trial-3", "abc")
    assert "window-5x5" in wb.tags
    # a flat "5x5" next to the nested list: W&B groups, filters and colours runs by it
    assert extra["window_size"] == "5x5" and extra["trial_number"] == 3
    assert extra["trial_params"] == {"model.rpb.window_size": "5x5"}


def _plain_trial_config(base, sweep, spec):
    """The reference: a trial's config built on a deep copy of the whole base, every key set per trial."""
    from omegaconf import OmegaConf

    from sweeps.space import fixed_values, to_config_value, window_label

    cfg = base.copy()
    for path, value in {**fixed_values(sweep), **spec.params}.items():  # OmegaConf's own set, not set_value's
        OmegaConf.update(cfg, path, to_config_value(path, value), merge=False)
    cfg.run_dir, cfg.resume, cfg.name = spec.run_dir, spec.resume, f"{sweep.study_name}-trial-{spec.number}"
    wb = cfg.tracker.wandb
    wb.group, wb.job_type, wb.name, wb.id = sweep.study_name, "trial", f"trial-{spec.number}", spec.wandb_id
    window = window_label(list(cfg.model.rpb.window_size))
    wb.tags = [*wb.tags, f"study-{sweep.study_name}", f"window-{window}"]
    cfg.tracker.extra_config = {
        **OmegaConf.to_container(cfg.tracker.extra_config), "study_name": sweep.study_name, "sweep_kind": sweep.kind,
        "window_size": window, "trial_number": spec.number, "trial_params": dict(spec.params), **spec.extra,
    }  # fmt: skip
    return cfg


def test_trial_configs_equal_a_config_built_whole_and_keep_its_types(compose_sweep, tmp_path):
    """Each trial's config is unpickled from a ConfigTemplate of what the study's trials share (not deep-copied
    and set whole): the same values as the plain construction, the same schema (a wrong type is refused as set),
    struct mode (an unknown key is refused), and copies independent of each other and of the base."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ValidationError

    from sweeps.objective import TrialConfigs, TrialSpec

    sweep, base, _dims = check_sweep(compose_sweep("+sweep.fixed.optim.weight_decay=0.01"))
    configs = TrialConfigs(base, sweep)
    for number, window in ((1, "5x5"), (2, "3x3")):
        spec = TrialSpec(number=number, params={"optim.lr": 3e-3 * number, "model.rpb.window_size": window},
                         run_dir=str(tmp_path / f"t{number}"), wandb_id=f"id{number}", extra={"seed": number})  # fmt: skip
        copied, plain = configs(spec), _plain_trial_config(base, sweep, spec)
        assert copied == plain and OmegaConf.get_type(copied) is OmegaConf.get_type(base)
        assert OmegaConf.to_yaml(copied) == OmegaConf.to_yaml(plain)  # the keys in the same order too
    assert copied.optim.lr == 6e-3 and list(copied.model.rpb.window_size) == [3, 3]
    assert copied.optim.weight_decay == 0.01 and list(copied.tracker.wandb.tags).count("window-3x3") == 1
    with pytest.raises(ValidationError):
        copied.optim.lr = "fast"
    with pytest.raises(ConfigAttributeError):
        copied.optim.learning_rate = 1.0
    copied.optim.lr = 1.0
    assert configs(spec).optim.lr == 6e-3 and base.optim.lr == 2e-3  # neither the template nor the base changed


def test_a_trials_config_is_freed_without_the_collector_unless_train_fn_keeps_it(compose_sweep, tmp_path):
    """`run_trial` releases the trial's config (`release_config`): its nodes' parent links are reference cycles only
    the garbage collector would free. A config (or a node of it) the train_fn keeps stays whole."""
    import gc
    import weakref

    from sweeps.objective import TrialConfigs, TrialSpec, run_trial

    sweep, base, _ = check_sweep(compose_sweep())
    configs = TrialConfigs(base, sweep)
    spec = TrialSpec(3, {"optim.lr": 0.002, "model.rpb.window_size": "5x5"}, str(tmp_path / "trial-3"), "abcdefgh")
    seen, kept = [], []

    def forgets(cfg, on_epoch_end=None):
        seen.append(weakref.ref(cfg.optim))
        return {"status": "completed"}

    def keeps(cfg, on_epoch_end=None):
        kept.append(cfg.optim)  # a node, not the root
        return {"status": "completed"}

    gc.disable()
    try:
        run_trial(configs, spec, forgets)
        assert seen[0]() is None  # freed by reference counting, no collection ran
        run_trial(configs, spec, keeps)
        assert kept[0].lr == 0.002 and kept[0]._get_full_key("lr") == "optim.lr"  # still linked to its root
    finally:
        gc.enable()


def test_a_train_fn_that_reads_its_config_only_gets_the_same_config_set_anew_each_trial(compose_sweep, tmp_path):
    """`TrialConfigs(reuse=True)` (a train_fn marked `reads_config_only`, as `experiments.train.train`): the config
    handed out last is set anew, equal to the one a copy would give (the W&B tags and the window too); a config the
    train_fn kept is left as it was and the next trial gets a copy; a trial with `extra` keys gets a copy."""
    from omegaconf import OmegaConf

    from experiments.config import READS_CONFIG_ONLY
    from experiments.train import train
    from sweeps.objective import TrialConfigs, TrialSpec

    assert getattr(train, READS_CONFIG_ONLY) is True
    sweep, base, _dims = check_sweep(compose_sweep())
    reused, copied = TrialConfigs(base, sweep, reuse=True), TrialConfigs(base, sweep)

    def spec(number, window, **extra):
        return TrialSpec(number=number, params={"optim.lr": 1e-3 * number, "model.rpb.window_size": window},
                         run_dir=str(tmp_path / f"t{number}"), wandb_id=f"id{number}", extra=extra)  # fmt: skip

    import gc

    gc.disable()  # reused without a collection freeing what setting a trial's values leaves behind
    try:
        first = reused(spec(1, "5x5"))
        first_id = id(first)
        del first  # the train_fn returned and kept nothing
        for number, window in ((2, "3x3"), (3, "7x7"), (4, "3x3")):
            cfg = reused(spec(number, window))
            assert id(cfg) == first_id  # the same object, set anew
            assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(copied(spec(number, window)))
            assert list(cfg.tracker.wandb.tags).count(f"window-{window}") == 1 and len(cfg.tracker.wandb.tags) == len(
                copied(spec(number, window)).tracker.wandb.tags
            )
            del cfg
    finally:
        gc.enable()
    kept = reused(spec(5, "5x5")).optim  # a train_fn that keeps a node of its config
    fresh = reused(spec(6, "3x3"))
    assert id(fresh) != first_id and kept.lr == 5e-3 and kept._get_full_key("lr") == "optim.lr"
    del fresh
    extra = reused(spec(7, "5x5", seed=1))
    assert extra.tracker.extra_config.seed == 1
    del extra
    assert "seed" not in reused(spec(8, "5x5")).tracker.extra_config  # no trial's extra keys linger


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("optim.lr", 3),  # a typed float set from an int: converted to 3.0
        ("optim.lr", "0.5"),  # ... from a string OmegaConf converts
        ("optim.lr", "fast"),  # ... from one it refuses
        ("optim.lr", None),  # None on a key that is not optional
        ("optim.lr", "${optim.weight_decay}"),  # an interpolation
        ("model.rpb.window_size", [5, 7]),  # a list of the same length, element by element
        ("model.rpb.window_size", [5, 7, 9]),  # a list of another length: through OmegaConf
        ("model.rpb.window_size", ["x", 7]),  # an element of the wrong type
        ("optim.learning_rate", 1.0),  # a key the config does not have
        ("tracker.extra_config.new_key", 1),  # a new key where the config allows one
        ("tracker.extra_config", {"a": 1}),  # a mapping
        ("name", 12),  # an int on a string key
        ("resume", None),  # None on an optional key
    ],
)
def test_set_value_does_what_omegaconf_update_does(compose_sweep, path, value):
    """`sweeps.space.set_value` (a trial's values set straight on the config's nodes) leaves the config as
    `OmegaConf.update(merge=False)` does, node types included, and refuses what it refuses with the same error."""
    from omegaconf import OmegaConf

    from sweeps.space import set_value

    _, base, _ = check_sweep(compose_sweep())
    fast, plain = base.copy(), base.copy()
    try:
        OmegaConf.update(plain, path, value, merge=False, force_add=False)
    except Exception as e:  # whatever OmegaConf raises, set_value must raise as well
        with pytest.raises(type(e)):
            set_value(fast, path, value)
        assert fast == base  # nothing half set
        return
    set_value(fast, path, value)
    assert OmegaConf.to_yaml(fast, resolve=False) == OmegaConf.to_yaml(plain, resolve=False)
    node, expected = OmegaConf.select(fast, path), OmegaConf.select(plain, path)
    assert type(node) is type(expected)
    for a, b in zip(_nodes(fast), _nodes(plain), strict=True):
        assert (type(a), a._metadata.ref_type, a._metadata.optional) == (type(b), b._metadata.ref_type,
                                                                         b._metadata.optional)  # fmt: skip


def _nodes(cfg):
    from omegaconf import DictConfig, ListConfig

    stack = [cfg]
    while stack:
        node = stack.pop()
        yield node
        content = node.__dict__.get("_content")
        stack.extend(content.values() if isinstance(node, DictConfig) and isinstance(content, dict) else
                     content if isinstance(node, ListConfig) and isinstance(content, list) else [])  # fmt: skip


def test_set_value_refuses_a_read_only_config(compose_sweep):
    from omegaconf import OmegaConf
    from omegaconf.errors import ReadonlyConfigError

    from sweeps.space import set_value

    _, base, _ = check_sweep(compose_sweep())
    cfg = base.copy()
    OmegaConf.set_readonly(cfg.model, True)
    for path, value in (("model.drop_rate", 0.1), ("model.rpb.window_size", [5, 5])):
        with pytest.raises(ReadonlyConfigError):
            set_value(cfg, path, value)
    assert cfg == base
