"""Scenario output: counts in decimal; SPTEs, GFNs, PFNs, GPAs and SPTE fields in hex."""

from __future__ import annotations

import json
from pathlib import Path

from client.scenario.format import parse
from client.scenario.offline import OfflineBackend
from client.scenario.runner import run
from client.scenario.show import brief, jsonable, show
from tests.cli.conftest import Cli

DIRTY = Path(__file__).resolve().parents[2] / "scenarios" / "dirty-logging.toml"


def test_brief_prints_counts_in_decimal_and_addresses_in_hex() -> None:
    values = {
        "result": "ok",
        "generation": 12,
        "spte_changes": 1026,
        "gfn": 1,
        "level": 1,
        "spte": 0xFEB00016,
        "pfn": 0x1000001,
        "dirty": [3, 512],
        "mmio_check": None,
        "mmio": False,
        "gpa": 0x1000,  # shown in the step's label, not here
    }
    assert brief(values) == (
        "result=ok generation=12 spte_changes=1026 gfn=0x1 level=1 spte=0xfeb00016 "
        "pfn=0x1000001 dirty=[3, 512] mmio_check=None mmio=False"
    )


def test_stats_and_kinds_are_counts() -> None:
    assert (
        show("stats", {"pf_taken": 1026, "pages_4k": 512}) == "{'pf_taken': 1026, 'pages_4k': 512}"
    )
    assert show("kinds", {"leaf": 16}) == "{'leaf': 16}"


def test_spte_fields_and_dump_entries_are_hex() -> None:
    assert (
        show("fields", {"PFN": 0x1000001, "memory type": 6})
        == "{'PFN': 0x1000001, 'memory type': 0x6}"
    )
    entry = {"root": "direct", "gfn": 0xFEB00, "level": 1, "value": 0xFEB00016, "kind": "mmio"}
    assert show("sptes", [entry]) == (
        "[{'root': 'direct', 'gfn': 0xfeb00, 'level': 1, 'value': 0xfeb00016, 'kind': 'mmio'}]"
    )


def test_json_keeps_counts_as_numbers() -> None:
    values = {"spte_changes": 70000, "gfn": 1, "stats": {"pf_taken": 70000}, "fields": {"A": 1}}
    assert jsonable("", values) == {
        "spte_changes": 70000,
        "gfn": "0x1",
        "stats": {"pf_taken": 70000},
        "fields": {"A": "0x1"},
    }


def test_failed_expectations_print_pfn_and_gfn_in_hex() -> None:
    scenario = parse(
        """
        name = "wrong"
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
        expect = { gfn = 2, pfn = "0x1000002", fields = { PFN = "0x1000002", A = 1 } }
        [[steps]]
        op = "dump"
        expect = { count = 2, sptes = [{ gfn = 2, value = "0x8600001000001b77" }] }
        """
    )
    result = run(scenario, OfflineBackend(scenario))
    assert result.steps[1].failures == [
        "expected gfn 0x2, got 0x1",
        "expected pfn 0x1000002, got 0x1000001",
        # only the fields the expectation names, in hex as `kvmmu decode` prints them
        "expected fields {'PFN': 0x1000002, 'A': 0x1}, got {'PFN': 0x1000001, 'A': 0x1}",
    ]
    assert result.steps[2].failures == [
        "expected count 2, got 1",
        "expected SPTE(s) [{'gfn': 0x2, 'value': 0x8600001000001b77}] in the dump",
    ]


def test_cli_prints_spte_changes_in_decimal() -> None:
    out = Cli(None).ok("scenario", "run", str(DIRTY), "--offline")
    assert "enable=True): result=ok generation=4 zap=none spte_changes=513" in out
    assert "enable=False): result=ok generation=6 zap=none spte_changes=1026" in out
    assert "gfn=0x40003" in out
    assert "spte_changes=0x" not in out


def test_cli_json_prints_counts_as_numbers() -> None:
    out = Cli(None).ok("--json", "scenario", "run", str(DIRTY), "--offline")
    steps = [json.loads(line) for line in out.splitlines()]
    assert steps[8]["result"]["spte_changes"] == 1026
    assert steps[4]["result"]["gfn"] == "0x40003"
    assert steps[4]["result"]["spte"] == "0x8600001040003b77"
