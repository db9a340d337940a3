"""The packages as stacks read from the bottom up: no import cycle, and the ablation a client of the sweeps.

Every module of rpb, experiments, sweeps and dashboards is parsed with `ast` (imports inside functions included:
a deferred import still ties two modules together), nothing is imported or run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rpb", "experiments", "sweeps", "dashboards")
ABLATION = "sweeps.ablation"
# `python -m sweeps.ablate`: rpb-ablate's former module, kept as a command for scripts (and the Ctrl-C line under a
# multi-process launcher). It only runs `sweeps.ablation.cli.main`; no module imports it.
ABLATION_COMMANDS = ("sweeps.ablate",)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` denotes: itself, or the package that holds the name (`from pkg import name`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `module` imports, anywhere in its file."""
    out: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the submodule pkg.mod; `from mod import name` the module mod
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        out |= {target for n in names if (target := _resolve(n, modules)) and target != module}
    return out


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_deferred_and_relative_imports():
    graph = import_graph()
    assert "sweeps.ablation.stats" in graph["sweeps.ablation.verdict"]
    assert "experiments.train" in graph["sweeps.ablation.grid"]  # imported inside a function (deferred: torch)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    graph = import_graph()
    found = [c for c in cycles(graph) if any(m.split(".")[0] == package for m in c)]
    assert not found, f"import cycles in {package}: " + "; ".join(" <-> ".join(c) for c in found)


def test_nothing_below_the_ablation_imports_it():
    graph = import_graph()
    below = {m for m in graph if m.startswith("sweeps") and not m.startswith(ABLATION) and m not in ABLATION_COMMANDS}
    wrong = sorted(f"{m} -> {t}" for m in below for t in graph[m] if t == ABLATION or t.startswith(ABLATION + "."))
    assert not wrong, "the ablation is a client of the sweeps, imported by none of them: " + ", ".join(wrong)
    assert not [m for m in graph if "sweeps.ablate" in graph[m]], "sweeps.ablate is a command, not a module to import"


def _sweeps_stack() -> list[set[str]]:
    """The rows of the stack `sweeps/__init__.py` documents, top (imported by the rest) first."""
    import sweeps

    text = sweeps.__doc__.split("A stack read from the bottom up", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in text.splitlines()[2:]:
        names = re.split(r"\s{2,}", line.strip())[0] if line[4:5].strip() else ""
        if names and not names.endswith("/"):
            rows.append({f"sweeps.{n.strip()}" for n in names.split(",")})
    return rows


def test_sweeps_imports_only_what_its_documented_stack_puts_above_or_beside():
    graph = import_graph()
    rows = _sweeps_stack()
    row_of = {m: i for i, row in enumerate(rows) for m in row}
    listed = {m for m in graph if m.startswith("sweeps.") and not m.startswith(ABLATION) and m not in ABLATION_COMMANDS}
    assert listed == set(row_of), f"modules missing from the stack: {sorted(listed - set(row_of))}"
    wrong = sorted(f"{m} -> {t}" for m in listed for t in graph[m] if t in row_of and row_of[t] > row_of[m])
    assert not wrong, "imports from below in sweeps' documented stack: " + ", ".join(wrong)
