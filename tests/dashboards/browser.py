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
