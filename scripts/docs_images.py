"""Regenerate the README's pictures (docs/images/*.png) with a headless Chromium.

    make docs-images

A bit-field diagram of a TD's MMIO SPTE, the same SPTE read in a VMX VM, and a
report page of the dirty-logging scenario; each drawn by kvmmu, screenshotted.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from client.commands.tooling import _report_from_model
from client.pictures.bitfield import bitfield_svg
from client.pictures.chromium import find_chromium, screenshot
from client.pictures.report import render_html
from client.scenario.format import load
from client.scenario.offline import OfflineBackend
from client.scenario.runner import run
from mmu.decode import decode_spte
from mmu.profiles import host_from_profile
from mmu.vmtypes import VmType, VmView

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "images"


def main() -> int:
    if find_chromium() is None:
        print("docs-images: Chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    host = host_from_profile("intel-tdx")
    td = VmView.for_type(host, VmType.TDX)
    vmx = VmView.for_type(host, VmType.DEFAULT)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, view, value, level in (
            ("spte-td-mmio", td, 0xFEB00008, None),
            ("spte-vmx-leaf", vmx, 0x8600000123400B77, 1),
        ):
            svg = work / f"{name}.svg"
            svg.write_text(bitfield_svg(decode_spte(view, value, level)))
            screenshot(svg, OUT / f"{name}.png", width=1184, height=224)
        scenario = load(REPO / "scenarios" / "dirty-logging.toml")
        backend = OfflineBackend(scenario)
        run(scenario, backend)
        page = work / "report.html"
        report = _report_from_model(
            backend.vms["vm"], f"{scenario.name}: VM vm", scenario.profile, []
        )
        page.write_text(render_html(report))
        screenshot(page, OUT / "report.png", width=1200, height=1100)
    for png in sorted(OUT.glob("*.png")):
        print(f"wrote {png.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
