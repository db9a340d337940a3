"""Console scripts for subprocess tests, found wherever the package is installed (no `.venv/bin/` assumed)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def console_script(name: str) -> str:
    """The path of console script `name`: next to the running interpreter (its virtual environment), else on PATH.

    Raises:
        FileNotFoundError: the package's scripts are not installed where this interpreter or PATH can see them.
    """
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"console script {name!r} is neither next to {sys.executable} nor on PATH: install the package "
            "(pip install -e .) into the environment that runs pytest."
        )
    return found
