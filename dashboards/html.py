"""A self-contained HTML page: inline CSS, images referenced relatively, no scripts from anywhere."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; background: #fff; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; } th { background: #eee; }
td.l, th.l { text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; text-align: center; }
.row { display: flex; flex-wrap: wrap; gap: 0.5em; align-items: flex-start; }
.row figure { flex: 1 1 520px; }
.note { color: #a60; font-style: italic; }
caption { text-align: left; font-weight: bold; padding: 2px 0; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.8em; }
"""


def esc(text: object) -> str:
    return html.escape(str(text))


def figure(src: str, caption: str) -> str:
    return f'<figure><img src="{esc(src)}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def table(header: Sequence[str] | None, rows: Sequence[Sequence[object]], left: int = 1) -> str:
    """A table whose first `left` columns are text (left-aligned), the rest numbers; no header row for None."""

    def cell(tag: str, i: int, value: object) -> str:
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{esc(value)}</{tag}>"

    head = "<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def counts(caption: str, values: Mapping[str, int], labels: Mapping[str, str] | None = None) -> str:
    """A one-row table of counts that a program can read back: the whole mapping as JSON in the table's
    ``data-counts`` attribute, and each number in a cell ``data-count="<key>"``."""
    labels = labels or {}
    head = "".join(f"<th>{esc(labels.get(k, k))}</th>" for k in values)
    body = "".join(f'<td data-count="{esc(k)}">{int(v)}</td>' for k, v in values.items())
    data = esc(json.dumps({k: int(v) for k, v in values.items()}))
    return (
        f'<table class="counts" data-counts="{data}"><caption>{esc(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody><tr>{body}</tr></tbody></table>"
    )


def page(title: str, sections: Sequence[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
