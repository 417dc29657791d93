"""`scenario diff` compares the dumped SPTEs themselves, not only how many there are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.scenario.diff import DiffRow, SpteDiff, diff, text_rows
from client.scenario.format import Scenario, parse
from client.scenario.offline import OfflineBackend
from client.scenario.runner import RunResult, run
from tests.cli.conftest import Cli

# On an SNP host a default VM and a KVM_X86_SW_PROTECTED_VM build the same RAM
# SPTE, but the MMIO SPTE carries the memslot generation, which moves by 2 for
# the default VM (SMM address space) and by 1 for the other: the two dumps hold
# the same number of SPTEs, of the same kinds, at the same GFNs and levels --
# only one SPTE's value differs.
VALUES_ONLY = """
name = "values-only"
[host]
profile = "amd-sev-snp"
[[vms]]
id = "vm"
[[steps]]
op = "memslot"
slot = 0
gpa = 0
size = "1G"
[[steps]]
op = "fault"
gpa = "0x1000"
access = "write"
[[steps]]
op = "fault"
gpa = "0xfeb00000"
[[steps]]
op = "dump"
"""
RAM_SPTE, DEFAULT_MMIO, SW_PROTECTED_MMIO = 0x801000001E67, 0xFF800FEB00017, 0xFF800FEB0000F


def runs(scenario: Scenario, *types: str) -> list[RunResult]:
    variants = [scenario.with_vm_type(t) for t in types]
    return [run(v, OfflineBackend(v)) for v in variants]


def dump_row(rows: list[DiffRow]) -> DiffRow:
    (row,) = [r for r in rows if r.step.op == "dump"]
    return row


def test_dumps_of_the_same_size_differ_when_their_values_do() -> None:
    scenario = parse(VALUES_ONLY)
    row = dump_row(diff(scenario.steps, runs(scenario, "default", "sw-protected")))
    assert row.cells == ("2 SPTEs", "2 SPTEs")
    assert row.differs
    # Only the SPTE that differs is listed; the RAM SPTE is the same in both.
    assert row.sptes == (SpteDiff("direct", 0xFEB00, 1, (DEFAULT_MMIO, SW_PROTECTED_MMIO)),)


def test_identical_dumps_do_not_differ() -> None:
    scenario = parse(VALUES_ONLY)
    rows = diff(scenario.steps, runs(scenario, "default", "default"))
    assert not any(r.differs for r in rows)
    assert dump_row(rows).sptes == ()


def test_an_spte_only_one_run_holds_differs() -> None:
    scenario = parse(VALUES_ONLY)
    both = runs(scenario, "default", "default")
    dump = both[1].steps[-1].values
    dump["sptes"] = [e for e in dump["sptes"] if e["gfn"] != 1]  # as if never faulted in
    dump["count"] = 1
    row = dump_row(diff(scenario.steps, both))
    assert row.sptes == (SpteDiff("direct", 1, 1, (RAM_SPTE, None)),)


def test_text_rows_show_the_differing_sptes_side_by_side() -> None:
    scenario = parse(VALUES_ONLY)
    rows = diff(scenario.steps, runs(scenario, "default", "sw-protected"))
    table = text_rows(rows)
    assert table[-2:] == [
        ["*", "3", "dump vm", "2 SPTEs", "2 SPTEs"],
        ["*", "", "  gfn 0xfeb00 level 1", hex(DEFAULT_MMIO), hex(SW_PROTECTED_MMIO)],
    ]


def test_text_rows_are_capped_per_dump() -> None:
    scenario = parse(
        Path(__file__).resolve().parents[2].joinpath("scenarios/one-guest-many-vm-types.toml")
        .read_text()
    )  # fmt: skip
    table = text_rows(diff(scenario.steps, runs(scenario, "default", "tdx")), limit=1)
    assert table[-2:] == [
        ["*", "", "  gfn 0x1 level 1", "0x8600001000001b77", "0x8600001000001b37"],
        ["*", "", "  ... 1 more SPTEs differ (--json lists all)", "", ""],
    ]


@pytest.fixture(scope="module")
def values_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("diff") / "values-only.toml"
    path.write_text(VALUES_ONLY)
    return path


def test_cli_marks_the_dump_and_lists_the_spte(values_only: Path) -> None:
    out = Cli(None).ok(
        "scenario", "diff", str(values_only), "--vm-types", "default,sw-protected", "--offline"
    )
    lines = out.splitlines()
    dump = next(i for i, line in enumerate(lines) if "dump vm" in line)
    assert lines[dump].startswith("*") and lines[dump].split()[-4:] == ["2", "SPTEs"] * 2
    assert lines[dump + 1].split() == [
        "*", "gfn", "0xfeb00", "level", "1", hex(DEFAULT_MMIO), hex(SW_PROTECTED_MMIO)
    ]  # fmt: skip
    assert len(lines) == dump + 2
    # The RAM fault builds the same SPTE in both: its row is not marked.
    assert lines[2].startswith(" ") and "fault vm" in lines[2]


def test_cli_json_lists_the_differing_sptes(values_only: Path) -> None:
    out = Cli(None).ok(
        "--json",
        "scenario",
        "diff",
        str(values_only),
        "--vm-types",
        "default,SW_PROTECTED",
        "--offline",
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[3] == {
        "step": 3,
        "op": "dump vm",
        "differs": True,
        "default": "2 SPTEs",
        "sw-protected": "2 SPTEs",
        "sptes": [
            {
                "root": "direct",
                "gfn": "0xfeb00",
                "level": 1,
                "default": hex(DEFAULT_MMIO),
                "sw-protected": hex(SW_PROTECTED_MMIO),
            }
        ],
    }
    assert "sptes" not in rows[1]
