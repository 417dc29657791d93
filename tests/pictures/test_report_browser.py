"""The HTML report renders in a real headless Chromium: not blank, no console messages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from client.pictures.chromium import find_chromium, screenshot

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium, installed from Debian's packages when missing and we may (root, apt-get)."""
    found = find_chromium()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "update", "-qq"], check=False, env=env, timeout=600, capture_output=True
        )
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            check=False,
            env=env,
            timeout=900,
            capture_output=True,
        )
        found = find_chromium()
    if found is None:
        pytest.skip(
            "Chromium is not installed and could not be installed (apt-get install "
            "chromium as root); the browser rendering test is skipped"
        )
    return found


def kvmmu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def assert_not_blank(png: Path) -> None:
    image = Image.open(png).convert("RGB")
    assert image.width > 400 and image.height > 400
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 20, "the screenshot is (nearly) one colour"
    assert max(ImageStat.Stat(image).stddev) > 10


def test_detector_sees_console_messages(chromium: str, tmp_path: Path) -> None:
    """Negative control: a page that logs to the console is caught."""
    page = tmp_path / "noisy.html"
    page.write_text('<html><body><p>x</p><script>console.error("boom")</script></body></html>')
    shot = screenshot(page, tmp_path / "noisy.png", width=400, height=300)
    assert any("boom" in line for line in shot.console)


@pytest.mark.parametrize("scenario", ["dirty-logging", "vmx-vs-tdx-mmio"])
def test_scenario_report_renders(chromium: str, tmp_path: Path, scenario: str) -> None:
    html = tmp_path / f"{scenario}.html"
    proc = kvmmu(
        "report", "--scenario", str(REPO / "scenarios" / f"{scenario}.toml"), "--html", str(html)
    )
    assert proc.returncode == 0, proc.stderr
    text = html.read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org", "")
    assert "https://" not in text
    shot = screenshot(html, tmp_path / f"{scenario}.png", width=1200, height=1600)
    assert shot.console == ()
    assert_not_blank(shot.png)


def test_server_report_of_a_large_vm(chromium: str, tmp_path: Path) -> None:
    from tests.server.conftest import start_server  # noqa: PLC0415 - only this test needs it

    srv = start_server("--state-dir", "none", "--log-level", "warning")
    try:
        target = f"127.0.0.1:{srv.port}"
        assert kvmmu("--server", target, "vm", "create", "--id", "big").returncode == 0
        assert (
            kvmmu(
                "--server",
                target,
                "memslot",
                "set",
                "big",
                "--slot",
                "0",
                "--gpa",
                "0",
                "--size",
                "1G",
            ).returncode
            == 0
        )
        batch = tmp_path / "faults.txt"
        batch.write_text("".join(f"{gfn << 12:#x} 2\n" for gfn in range(1 << 18)))
        proc = kvmmu("--server", target, "fault", "big", "--from-file", str(batch))
        assert proc.returncode == 0, proc.stderr
        assert kvmmu("--server", target, "fault", "big", "0xfeb00000").returncode == 0
        html = tmp_path / "big.html"
        proc = kvmmu("--server", target, "report", "big", "--html", str(html))
        assert proc.returncode == 0, proc.stderr
    finally:
        srv.stop()
    text = html.read_text()
    assert "262,145" in text  # every SPTE counted, drawn aggregated
    assert text.count("<rect") < 5000
    shot = screenshot(html, tmp_path / "big.png", width=1200, height=1600)
    assert shot.console == ()
    assert_not_blank(shot.png)
