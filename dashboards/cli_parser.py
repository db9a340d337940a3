"""The argument parser of the argparse-based console scripts (`rpb-report`, `rpb-wandb-workspace`)."""

from __future__ import annotations

import argparse

from experiments.launch import EXIT_CONFIG


class ToolParser(argparse.ArgumentParser):
    """An ArgumentParser whose help is headed by the tool's name and purpose (`"NAME: purpose"`, then argparse's
    usage, description and options), and whose usage errors are one line, `NAME: error: ... (NAME --help lists the
    options)`, with exit status `EXIT_CONFIG` (2), as the Hydra-based tools report a config mistake."""

    def __init__(self, prog: str, purpose: str, **kwargs) -> None:
        super().__init__(prog=prog, **kwargs)
        self.purpose = purpose

    def format_help(self) -> str:
        return f"{self.prog}: {self.purpose}\n\n{super().format_help()}"

    def error(self, message: str):
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")
