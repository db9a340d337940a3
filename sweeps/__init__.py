"""rpb-lab: Optuna sweeps over the training config.

Public API (import from the modules; `import sweeps` stays light):
    sweeps.study.run_study(cfg, train_fn=None) -> optuna.Study   # rpb-sweep and rpb-ablate
    sweeps.study.prepare_study(cfg), sweeps.study.worker_loop(cfg, train_fn=None)
    sweeps.space.SweepConfigError, parse_space, apply_params, parse_window, window_label, fixed_values
    sweeps.storage.build_storage(sweep_cfg), describe_storage, mask_secrets
    sweeps.summary.print_summary(cfg, study), write_best_config(cfg, study)
"""
