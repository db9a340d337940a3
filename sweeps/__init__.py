"""rpb-lab: Optuna sweeps over the training config.

Public API (import from the modules; `import sweeps` stays light):
    sweeps.study.run_study(cfg, train_fn=None) -> optuna.Study   # rpb-sweep and rpb-ablate
    sweeps.study.prepare_study(cfg), worker_loop(cfg, train_fn=None), StudyAlreadyDone, done_message
    sweeps.config.check_sweep(cfg) -> CheckedSweep(sweep, base, dims)   # once per command, then passed along
    sweeps.samplers.TrialSeededSampler, CellStudy                       # no cell lost, no point repeated
    sweeps.identity.check_identity(study, checked)                      # a changed sweep is refused by name
    sweeps.space.parse_space, apply_params, parse_window, window_label, fixed_values
    experiments.config_errors.SweepConfigError                          # (also importable from sweeps.space)
    sweeps.storage.build_storage(sweep_cfg), describe_storage, mask_secrets
    sweeps.summary.print_summary(checked, study), write_best_config(checked, study), ranked_trials
"""
