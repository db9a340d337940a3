"""How sweeps print: numbers at a few significant digits, config paths as short column names, and rich tables that
fit the terminal (`shutil.get_terminal_size`: 80 columns when the output is not a terminal and COLUMNS is unset),
dropping the columns that do not fit by priority and naming them under the table.

Shared by the sweep's summary (`sweeps.summary`), the ablation's verdict (`sweeps.ablation`) and the reports
(`dashboards`), so all of them write a number the same way. rich is imported where a table is drawn: the
formatting of numbers is needed by processes that never draw one.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence


def format_number(value: object, digits: int = 3) -> str:
    """A number at `digits` significant digits, without exponent for everyday magnitudes: 0.00125, 590, 12.3k,
    1.23M; integers below 10,000 as they are; "n/a" for None, NaN and non-numbers; other values as str()."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return "n/a"
    if isinstance(value, int) and abs(value) < 10_000:
        return str(value)
    text = f"{value:.{digits}g}"
    if abs(value) >= 1000 or ("e" in text and abs(value) >= 1):
        for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= size * (1 - 0.5 * 10 ** (-digits)):
                return f"{value / size:.{digits}g}{suffix}"
    if "e" in text:  # a short exponent: 3.12e-5
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def short_names(paths: Sequence[str]) -> list[str]:
    """Column names for config paths: the last part ("lr" for optim.lr) unless two paths share it (then whole)."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return [name if last.count(name) == 1 else path for name, path in zip(last, paths)]


def console_for(width: int | None = None):
    """A rich console as wide as the terminal (`shutil.get_terminal_size`), or `width` columns."""
    from rich.console import Console  # deferred: rich is needed only where a table is printed

    return Console(width=width or shutil.get_terminal_size().columns)


def fitted_table(
    console, title: str, columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[str]], left: Sequence[str] = ()
):
    """A rich table of `rows` that fits `console.width`: the columns with the highest priority number are dropped
    first until it fits (priority 0: never dropped). Returns (table, names of the dropped columns).

    Args:
        columns: (header, priority) per column.
        left: headers of text columns besides the first (left-justified; the others are numbers, right-justified).
    """
    from rich.measure import Measurement  # deferred: see console_for
    from rich.table import Table

    keep = list(range(len(columns)))
    droppable = sorted((i for i, (_, prio) in enumerate(columns) if prio > 0), key=lambda i: (-columns[i][1], -i))
    while True:
        table = Table(title=title, title_justify="left")
        for n, i in enumerate(keep):
            text = n == 0 or columns[i][0] in left
            table.add_column(columns[i][0], justify="left" if text else "right", no_wrap=True)
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        width = Measurement.get(console, console.options.update_width(10_000), table).maximum
        if width <= console.width or not droppable:
            return table, [columns[i][0] for i in range(len(columns)) if i not in keep]
        keep.remove(droppable.pop(0))


def print_fitted(console, title: str, columns, rows, left: Sequence[str] = ()) -> None:
    """Print `fitted_table` and, under it, the columns it dropped."""
    table, dropped = fitted_table(console, title, columns, rows, left)
    console.print(table)
    if dropped:
        console.print(f"  (not shown: {', '.join(dropped)}; a wider terminal shows them)")
