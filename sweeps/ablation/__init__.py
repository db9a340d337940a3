"""rpb-ablate: the window-size ablation, a client of the sweep machinery (`sweeps.study.run_study`).

Read from the bottom up; nothing below `sweeps.ablation` imports it:
    settings  the grid's factors, a setting (`Setting`) and how users and tables name it
    stats     one setting's interval over seeds, each setting against a baseline, the verdict table
    grid      the grid as a cell study (`ablation_config`), one trial's factors in W&B (`train_trial`)
    verdict   an ablation study's values per setting and seed, its verdict table printed
    cli       `rpb-ablate` (`main`, `ablate_main`, `ablate_help`)
"""
