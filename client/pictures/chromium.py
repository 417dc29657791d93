"""Screenshots of SVG/HTML files with a headless Chromium, when one is installed.

Used for the README's pictures (`make docs-images`) and by the tests that
check a report really renders. Chromium runs with no sandbox, no GPU and no
background networking, in a fresh profile directory; console messages are
collected from its log.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CANDIDATES: Final = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass(frozen=True, slots=True)
class Screenshot:
    png: Path
    console: tuple[str, ...]  # console messages the page produced


def screenshot(
    page: Path, png: Path, *, width: int, height: int, timeout: float = 90
) -> Screenshot:
    """Render `page` (an .html or .svg file) into `png`; raises if Chromium fails."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found (install Debian's chromium package)")
    with tempfile.TemporaryDirectory(prefix="kvmmu-chromium-") as profile:
        proc = subprocess.run(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if not png.exists():
        raise RuntimeError(
            f"Chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
        )
    console = tuple(line for line in proc.stderr.splitlines() if ":CONSOLE" in line)
    return Screenshot(png, console)
