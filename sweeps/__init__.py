"""rpb-lab: Optuna sweeps over the training config.

A stack read from the bottom up; each module imports only those above it or beside it in this list
(tests/test_layout.py):
    record, optuna_internals                  the trial record: statuses, trial/study/system attr keys (on
                                              experiments.result, the run's statuses and TrainResult); the private
                                              names of Optuna the sweeps use, from there only
    space, format                             the search space; how numbers and tables print
    samplers                                  no cell lost, no point repeated (draw indices, held parameter sets)
    recovery, pruners, devices, validate      dead workers' trials and their retries; pruners that judge a retry as
                                              the trial it continues; devices; the space checked against the model
    storage                                   the journal file or a database
    config                                    the `sweep` node checked once (`check_sweep` -> CheckedSweep)
    identity                                  what a study's values mean, checked on every start
    objective                                 one trial's life (`Objective`, `TrialConfigs`, `trial_line`)
    distributed                               K processes per trial: rank 0 owns the study
    worker                                    one worker's part: `prepare_study`, `worker_loop`, `done_message`
    cluster                                   workers as SLURM jobs (submitit)
    study                                     `run_study`: this command's workers, local or on the cluster
    summary, wandb_study, cli, api            the end of a sweep (its W&B run: trials table, best.yaml); `rpb-sweep`;
                                              `best_run`
    bench_overhead, bench_pruning             benchmarks
    ablation/                                 `rpb-ablate`, a client of all the above, imported by none of them

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
    sweeps.ablation.stats.verdict_table, sweeps.ablation.settings.Setting   # the ablation's statistics
"""
