"""`kvmmu scenario`, `kvmmu trace decode`, `kvmmu decode --svg`: the tooling commands."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.cli.conftest import REPO, Cli

SCENARIOS = REPO / "scenarios"
SAMPLE = REPO / "tests" / "data" / "sample-kvmmmu-trace.txt"


def test_scenario_run_offline_passes(offline: Cli) -> None:
    out = offline.ok("scenario", "run", str(SCENARIOS / "generation-stale.toml"), "--offline")
    assert "generation-stale: 6 steps ok, 0 failed (offline)" in out
    assert "mmio_check=RET_PF_INVALID" in out


def test_failed_expectation_prints_the_difference_and_exits_1(offline: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "bad"\n[[vms]]\nid = "vm"\n[[steps]]\nop = "fault"\ngpa = "0xfeb00000"\n'
        'expect = { outcome = "RET_PF_FIXED", level = 2 }\n'
    )
    result = offline("scenario", "run", str(bad), "--offline")
    assert result.code == 1
    assert "expected outcome 'RET_PF_FIXED', got 'RET_PF_EMULATE'" in result.out
    assert "expected level 2, got 1" in result.out
    assert "bad: 0 steps ok, 1 failed" in result.out


def test_malformed_scenario_is_a_usage_error(offline: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[vms]]\nid = "vm"\n[[steps]]\nop = "teleport"\n')
    line = offline.fails(2, "scenario", "run", str(bad), "--offline")
    assert "steps[0].op" in line


def test_scenario_diff_shows_where_vm_types_differ(offline: Cli) -> None:
    out = offline.ok(
        "--json",
        "scenario",
        "diff",
        str(SCENARIOS / "one-guest-many-vm-types.toml"),
        "--vm-types",
        "default,tdx",
        "--offline",
    )
    rows = {r["step"]: r for r in (json.loads(line) for line in out.splitlines())}
    # The generation moves by 2 (SMM address space) for the default VM, by 1 for the TD.
    assert "generation=2" in rows[0]["default"] and "generation=1" in rows[0]["tdx"]
    # RAM: WB + IPAT (0x70) for a VMX VM, WB (0x30) for a TD.
    assert rows[1]["differs"] and rows[1]["default"].endswith("b77")
    assert rows[1]["tdx"].endswith("b37")
    # MMIO: the VM's own MMIO value, 0x6 vs 0, and the generation bits.
    assert rows[2]["default"] == "RET_PF_EMULATE 0xfeb00016"
    assert rows[2]["tdx"] == "RET_PF_EMULATE 0xfeb00008"
    # Both dumps hold two SPTEs, but not the same two: the dump compares values.
    assert rows[4]["default"] == rows[4]["tdx"] == "2 SPTEs" and rows[4]["differs"]
    assert [(s["gfn"], s["default"], s["tdx"]) for s in rows[4]["sptes"]] == [
        ("0x1", "0x8600001000001b77", "0x8600001000001b37"),
        ("0xfeb00", "0xfeb00016", "0xfeb00008"),
    ]


def test_trace_decode_reads_stdin_and_annotates(offline: Cli) -> None:
    text = SAMPLE.read_text()
    out = offline.ok("trace", "decode", "-", "--profile", "intel-ept", stdin=text)
    lines = out.splitlines()
    assert [line for line in lines if not line.startswith("#kvmmu")] == text.splitlines()
    assert sum(line.startswith("#kvmmu") for line in lines) == 9
    tdx = offline.ok("trace", "decode", str(SAMPLE), "--profile", "intel-tdx", "--vm-type", "tdx")
    assert "MMIO value 0x0" in tdx


def test_decode_svg_has_the_same_fields_as_the_text(offline: Cli, tmp_path: Path) -> None:
    svg = tmp_path / "spte.svg"
    text = offline.ok(
        "--json",
        "decode",
        "0xfeb00008",
        "--profile",
        "intel-tdx",
        "--vm-type",
        "tdx",
        "--svg",
        str(svg),
    )
    decoded = json.loads(text)
    root = ET.fromstring(svg.read_text())
    boxes = [
        (g.attrib["data-name"], int(g.attrib["data-lsb"]), int(g.attrib["data-msb"]))
        for g in root.iter("{http://www.w3.org/2000/svg}g")
        if g.attrib.get("class") == "field"
    ]
    fields = sorted(
        ((f["name"], int(f.get("lsb", 0)), int(f["msb"])) for f in decoded["fields"]),
        key=lambda f: -f[1],
    )
    assert boxes == fields
    caption = "".join(
        t.text or ""
        for t in root.iter("{http://www.w3.org/2000/svg}text")
        if t.attrib.get("class") == "caption"
    )
    assert caption == f"mmio: {decoded['verdict']}"
