"""A one-file HTML page: inline CSS, images inside the page as data URIs, no scripts or files from anywhere."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1240px; padding: 0 12px; color: #222;
       background: #fff; font-size: 15px; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; } th { background: #eee; }
td.l, th.l { text-align: left; }
.scroll { max-width: 100%; overflow-x: auto; }
figure { display: inline-block; margin: 0.5em 0; vertical-align: top; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; text-align: center; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.heatmaps { display: flex; flex-wrap: wrap; gap: 12px; }
.heatmaps figure img { max-width: none; }
.note { color: #a60; font-style: italic; }
.verdict td:last-child { font-weight: bold; text-align: left; } .verdict th:last-child { text-align: left; }
caption { text-align: left; font-weight: bold; padding: 2px 0; }
details { margin: 1em 0; } summary { cursor: pointer; color: #345; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }
"""


def esc(text: object) -> str:
    return html.escape(str(text))


def figure(uri: str, caption: str, width: int, height: int, text_px: float = float("nan"), name: str = "") -> str:
    """An image inside the page (`uri`: a data URI) at its natural size. ``data-text-px`` carries the size of its
    smallest text at that size (pixels, "nan" when unknown) and ``data-name`` its name, for the page's checks."""
    return (
        f'<figure data-name="{esc(name)}"><img src="{esc(uri)}" alt="{esc(caption)}" width="{width}" '
        f'height="{height}" data-text-px="{text_px:.1f}"><figcaption>{esc(caption)}</figcaption></figure>'
    )


def details(summary: str, body: str) -> str:
    """A collapsed block: `summary` shows, `body` (HTML) opens on a click."""
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def table(
    header: Sequence[str] | None,
    rows: Sequence[Sequence[object]],
    left: int = 1,
    titles: Sequence[str] | None = None,
    cls: str = "",
) -> str:
    """A table whose first `left` columns are text (left-aligned), the rest numbers; no header row for None.

    Args:
        titles: a tooltip per header cell (e.g. the full config path of a shortened parameter name).
        cls: the table's CSS class.
    """

    def cell(tag: str, i: int, value: object, title: str = "") -> str:
        attrs = (' class="l"' if i < left else "") + (f' title="{esc(title)}"' if title else "")
        return f"<{tag}{attrs}>{esc(value)}</{tag}>"

    titles = titles or [""] * len(header or [])
    head = (
        "<thead><tr>" + "".join(cell("th", i, h, t) for i, (h, t) in enumerate(zip(header, titles))) + "</tr></thead>"
        if header
        else ""
    )
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    attrs = f' class="{esc(cls)}"' if cls else ""
    return f'<div class="scroll"><table{attrs}>{head}<tbody>{body}</tbody></table></div>'


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
