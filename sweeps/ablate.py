"""`python -m sweeps.ablate`: the former home of rpb-ablate, kept as a command (the module that a Ctrl-C line under
a multi-process launcher names, and scripts that run it). The ablation lives in `sweeps.ablation`; nothing imports
this module."""

from sweeps.ablation.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
