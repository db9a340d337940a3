"""A study created before a config key existed continues when the key holds its default (sweeps.identity)."""

from __future__ import annotations

import optuna
import pytest

from sweeps.config import check_sweep
from sweeps.identity import IDENTITY_ATTR, default_base_values, identity_changes
from sweeps.space import SweepConfigError
from sweeps.storage import build_storage
from sweeps.study import run_study

ADDED_SINCE = ("model.norm_eps", "model.layer_scale_init", "model.fc_norm", "model.init_from", "trainer.threads")


def _forget_keys(cfg, keys) -> None:
    """Remove `keys` from the study's stored identity: a study created before they existed."""
    sweep = check_sweep(cfg).sweep
    study = optuna.load_study(study_name=sweep.study_name, storage=build_storage(sweep, heartbeat=False))
    identity = study.user_attrs[IDENTITY_ATTR]
    for key in keys:
        del identity["base"][key]
    study.set_user_attr(IDENTITY_ATTR, identity)


def test_an_old_study_continues_when_the_new_keys_hold_their_defaults(compose_sweep):
    run_study(compose_sweep("sweep.n_trials=2", "trainer.epochs=1"))
    _forget_keys(compose_sweep(), ADDED_SINCE)
    study = run_study(compose_sweep("sweep.n_trials=3", "trainer.epochs=1"))
    assert len(study.trials) == 3 and "identity_changes" not in study.user_attrs
    # a new key set to something else than what the old trials ran with is a change
    with pytest.raises(SweepConfigError, match=r"model\.norm_eps added"):
        run_study(compose_sweep("sweep.n_trials=4", "trainer.epochs=1", "model.norm_eps=1e-6"))


def test_identity_changes_ignores_an_added_key_at_its_default():
    defaults = default_base_values()
    old = {"base": {"trainer.epochs": 5}}
    new = {"base": {"trainer.epochs": 5, "model.norm_eps": defaults["model.norm_eps"], "model.fc_norm": True}}
    assert identity_changes(old, new, defaults) == ["model.fc_norm added"]
    assert identity_changes(old, new) == ["model.fc_norm added", "model.norm_eps added"]  # no defaults: all
    assert identity_changes(new, old, defaults) == ["model.fc_norm removed", "model.norm_eps removed"]
