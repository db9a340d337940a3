"""Headless Chromium helpers for the report tests: does every image load, is the page more than a blank sheet."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

# Runs after load in a copy of the page: writes how many <img> decoded (naturalWidth > 0) into the DOM.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const marker = document.createElement('div');
  marker.id = 'img-probe';
  marker.textContent = `images ${ok}/${imgs.length}`;
  document.body.appendChild(marker);
});
</script>"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=timeout, check=False)


def images_loaded(index: Path) -> tuple[int, int]:
    """(decoded images, <img> elements) of the page, opened from disk."""
    probe = index.with_name("_probe.html")
    probe.write_text(index.read_text().replace("</body>", PROBE + "</body>"))
    try:
        out = _run(["--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri()]).stdout
    finally:
        probe.unlink()
    match = re.search(r"images (\d+)/(\d+)", out)
    assert match, f"the probe marker is missing from Chromium's DOM dump: {out[-500:]!r}"
    return int(match.group(1)), int(match.group(2))


def screenshot(index: Path, out: Path, size: str = "1280,2400") -> np.ndarray:
    """A screenshot of the page as an (H, W, 3) uint8 array."""
    from PIL import Image

    _run([f"--screenshot={out}", f"--window-size={size}", "--virtual-time-budget=10000", index.resolve().as_uri()])
    assert out.is_file(), "Chromium wrote no screenshot"
    return np.asarray(Image.open(out).convert("RGB"))


# Runs after load: what a reader sees, measured in CSS pixels, written into the DOM as JSON.
MEASURE = """<script>
window.addEventListener('load', () => {
  const figs = Array.from(document.querySelectorAll('figure[data-name]')).map(f => {
    const img = f.querySelector('img');
    const box = img.getBoundingClientRect();
    const scale = img.naturalWidth ? box.width / img.naturalWidth : 0;
    return {name: f.dataset.name, top: Math.round(box.top), width: box.width, natural: img.naturalWidth,
            loaded: img.complete && img.naturalWidth > 0, text_px: parseFloat(img.dataset.textPx) * scale,
            heatmap: f.parentElement.classList.contains('heatmaps')};
  });
  const sizes = Array.from(document.querySelectorAll('body *'))
    .filter(e => e.childNodes.length && Array.from(e.childNodes).some(n => n.nodeType === 3 && n.textContent.trim()))
    .filter(e => e.offsetParent !== null)
    .map(e => parseFloat(getComputedStyle(e).fontSize));
  const tables = Array.from(document.querySelectorAll('div.scroll > table')).map(t => t.getBoundingClientRect().width);
  const out = {figures: figs, page_width: document.documentElement.scrollWidth,
               widest_table: Math.max(0, ...tables), min_font_px: Math.min(...sizes)};
  const marker = document.createElement('pre');
  marker.id = 'measure';
  marker.textContent = 'MEASURE' + JSON.stringify(out) + 'END';
  document.body.appendChild(marker);
});
</script>"""


def measure(index: Path, width: int = 1280) -> dict:
    """What Chromium lays out for the page at `width` CSS pixels: per figure (name, top, width, natural width,
    loaded, smallest text in pixels as shown, in a heatmap row), the page's scroll width, its widest table (tables
    scroll inside their own box, so the page alone would not show one too wide) and its smallest font size."""
    import json

    probe = index.with_name("_measure.html")
    probe.write_text(index.read_text().replace("</body>", MEASURE + "</body>"))
    try:
        args = [f"--window-size={width},1000", "--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri()]
        out = _run(args).stdout
    finally:
        probe.unlink()
    match = re.search(r"<pre id=\"measure\">MEASURE(.*?)END</pre>", out, re.S)
    assert match, f"the measure marker is missing from Chromium's DOM dump: {out[-500:]!r}"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
