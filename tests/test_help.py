"""Each console script's --help: headed with its own name and purpose, its own group's YAML with the comments."""

from __future__ import annotations

import subprocess

import pytest

from experiments.config import CONF_DIR
from tests.scripts import console_script


def _comment_lines(path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if "#" in line]


@pytest.mark.parametrize(
    ("tool", "purpose", "group_file", "within"),
    [
        ("rpb-train", "train a Vision Transformer with relative position bias", "trainer/default.yaml", 40),
        ("rpb-sweep", "an Optuna study over the training config", "sweep/default.yaml", 12),
        ("rpb-ablate", "the window-size ablation", "ablation/window_size.yaml", 10),
    ],
)
def test_help_is_the_tools_own(tool, purpose, group_file, within, capsys):
    from experiments.cli import train_help
    from sweeps.ablation.cli import ablate_help
    from sweeps.cli import sweep_help

    text = {"rpb-train": train_help, "rpb-sweep": sweep_help, "rpb-ablate": ablate_help}[tool]()
    lines = text.splitlines()
    assert lines[0].startswith(f"{tool}: {purpose}")
    header = f"{group_file.split('/')[0]}.* keys (conf/{group_file}; "
    at = next(i for i, line in enumerate(lines) if line.startswith(header))
    assert at < within, f"{group_file} should come near the top of {tool} --help (line {at})"
    shown = [line.strip() for line in lines[at + 1 :]]
    for comment in _comment_lines(CONF_DIR / group_file):  # every key and comment of the file, in order
        assert comment in shown, comment
    others = {"rpb-train", "rpb-sweep", "rpb-ablate"} - {tool}
    assert not any(line.startswith(f"{other}:") for other in others for line in lines)


def test_help_of_the_console_scripts(tmp_path):
    def help_of(tool: str) -> str:
        return subprocess.run([console_script(tool), "--help"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, check=True).stdout  # fmt: skip

    train = help_of("rpb-train")
    assert train.startswith("rpb-train: ") and "resume=RUN_DIR trainer.epochs=N" in train
    assert "warm-up is kept, the cosine decays over the new total" in train  # the schedule's rule when extending
    assert help_of("rpb-sweep").startswith("rpb-sweep: ")
    launch = help_of("rpb-launch")  # its own head, then accelerate launch's options
    assert launch.startswith("rpb-launch: accelerate launch, ended by Ctrl-C") and "--num_processes" in launch
    assert help_of("rpb-report").startswith("rpb-report: write a study's report")
    assert help_of("rpb-wandb-workspace").startswith("rpb-wandb-workspace: the W&B sweep workspace")
    assert not list(tmp_path.iterdir())  # --help writes nothing


def test_every_console_script_is_headed_by_its_name():
    """Each console script the installed package declares: `--help` starts with "NAME: " (a new one cannot skip it)."""
    from importlib.metadata import distribution

    scripts = [ep.name for ep in distribution("rpb-lab").entry_points if ep.group == "console_scripts"]
    assert {"rpb-train", "rpb-sweep", "rpb-ablate", "rpb-launch", "rpb-report", "rpb-wandb-workspace"} <= set(scripts)
    for name in scripts:
        out = subprocess.run([console_script(name), "--help"], capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout.startswith(f"{name}: "), (name, out.stdout[:200])
