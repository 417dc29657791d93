"""The report writes counts and bit widths in decimal, masks and values in hex."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_host_table_numbers(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    scenario = REPO / "scenarios" / "mmio-caching-disabled.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "client.cli", "report", "--scenario", str(scenario), "--html",
         str(html)],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td></tr>", html.read_text()))
    assert re.fullmatch(r"\d+", rows["phys_bits"]) and re.fullmatch(r"\d+", rows["maxphyaddr"])
    assert rows["shadow_mmio_mask"].startswith("0x")
