"""kvmmu without a server: help, offline decode, number parsing, usage errors, exit 3."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click
import pytest

from client.cli import cli
from client.commands.params import parse_number
from tests.cli.conftest import Cli, free_port


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{path} ")
    return found


COMMANDS = _commands(cli)


def test_every_command_of_the_issue_exists() -> None:
    names = {path for path, _ in COMMANDS}
    assert names >= {
        "host", "host profiles", "vm", "vm create", "vm list", "vm get", "vm delete",
        "vm set-mmio-value", "vm tracing", "vm update", "memslot set", "memslot delete",
        "memslot list", "memslot get", "fault", "sptes", "decode", "zap", "dirty-log", "age",
        "stats", "events", "attributes", "health", "completion",
    }  # fmt: skip


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_help_with_an_example(path: str, command: click.Command) -> None:
    assert command.help, path
    assert command.epilog and "Examples:" in command.epilog, path
    assert f"kvmmu {path}" in command.epilog, path


def test_root_help_shows_examples_and_exit_statuses(offline: Cli) -> None:
    out = offline.ok("--help")
    assert "Examples:" in out
    assert "kvmmu vm create --type tdx --id td1" in out
    assert "3 the server cannot be reached" in out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "kvmmu"
    assert script.exists() or shutil.which("kvmmu"), "pip install -e . provides `kvmmu`"


@pytest.mark.parametrize(
    ("text", "sizes", "value"),
    [
        ("0x1f", False, 31),
        ("31", False, 31),
        ("0b101", False, 5),
        ("1_000", False, 1000),
        ("0xFFFF_FFFF_FFFF_FFFF", False, (1 << 64) - 1),
        ("4K", True, 4096),
        ("4k", True, 4096),
        ("2M", True, 2 << 20),
        ("1G", True, 1 << 30),
        ("4G", True, 4 << 30),
        ("4GiB", True, 4 << 30),
        ("0x10", True, 16),
    ],
)
def test_numbers_and_sizes(text: str, sizes: bool, value: int) -> None:
    assert parse_number(text, sizes=sizes) == value


@pytest.mark.parametrize(("text", "sizes"), [("4K", False), ("zz", True), ("1.5G", True)])
def test_bad_numbers(text: str, sizes: bool) -> None:
    with pytest.raises(ValueError, match="is not"):
        parse_number(text, sizes=sizes)


MMIO_SPTE = "0xfee0002e"  # make_mmio_spte(intel-ept, gfn 0xfee00, generation 5)


def test_offline_decode_human(offline: Cli) -> None:
    out = offline.ok("decode", MMIO_SPTE, "--profile", "intel-ept", "--generation", "5")
    lines = out.splitlines()
    assert lines[0] == "0x00000000fee0002e mmio gfn 0xfee00 gen 0x5"
    assert "verdict                 MMIO SPTE for this VM: (spte & 0x8000000000000007) == 0x6" in (
        lines
    )
    assert "mmio                    gfn 0xfee00 access 0x0 generation 0x5 (valid: true)" in lines
    assert " BITS  FIELD         VALUE    KIND             MEANING" in lines
    assert any(line.startswith("  2:0  MMIO pattern  0x6") for line in lines)
    assert "\x1b[" not in out  # piped: no colour


def test_offline_decode_json_has_the_proto_field_names(offline: Cli) -> None:
    data = json.loads(offline.ok("--json", "decode", MMIO_SPTE, "--profile", "intel-ept"))
    assert data["kind"] == "SPTE_KIND_MMIO"
    assert data["value"] == str(0xFEE0002E)
    assert data["is_mmio_for_vm"] is True
    assert data["mmio"]["gfn"] == str(0xFEE00)
    assert data["mmio"]["generation"] == 5
    assert list(data)[:3] == ["value", "kind", "fields"]  # .proto field order
    bits = sorted((f["lsb"], f["msb"]) for f in data["fields"])
    assert bits[0][0] == 0 and bits[-1][1] == 63


def test_offline_decode_tdx_mmio_value_is_zero(offline: Cli) -> None:
    tdx = json.loads(
        offline.ok("--json", "decode", "0", "--profile", "intel-tdx", "--vm-type", "tdx")
    )
    assert tdx["kind"] == "SPTE_KIND_MMIO" and tdx["is_mmio_for_vm"] is True
    vmx = json.loads(offline.ok("--json", "decode", "0", "--profile", "intel-tdx"))
    assert vmx["kind"] == "SPTE_KIND_NON_PRESENT" and vmx["is_mmio_for_vm"] is False
    explicit = json.loads(
        offline.ok("--json", "decode", "0", "--profile", "intel-tdx", "--mmio-value", "0")
    )
    assert explicit["kind"] == "SPTE_KIND_MMIO"


def test_offline_decode_with_level_reads_a_table_pointer(offline: Cli) -> None:
    data = json.loads(
        offline.ok(
            "--json", "decode", "0x8000007000001907", "--profile", "intel-ept", "--level", "4"
        )
    )
    assert data["kind"] == "SPTE_KIND_NON_LEAF"
    assert data["level"] == 4
    assert data["pfn"] == str(0x7000001)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["decode", "zz", "--profile", "intel-ept"],
            "Invalid value for 'VALUE': 'zz' is not a number",
        ),
        (["decode", "1", "--profile", "nope"], "'nope' is not one of"),
        (["decode", "0x1", "--profile", "intel-ept", "--level", "9"], "--level"),
        (["decode", "0x1", "--vm", "a", "--profile", "intel-ept"], "--vm uses the VM's own masks"),
        (["decode", str(1 << 64), "--profile", "intel-ept"], "does not fit in 64 unsigned bits"),
        (["memslot", "set", "vm1", "--slot", "0", "--gpa", "0", "--size", "0"], "must not be zero"),
        (
            ["memslot", "set", "vm1", "--slot", "0", "--gpa", "0", "--size", "12Q"],
            "not a number or size",
        ),
        (["fault", "vm1"], "missing GPA (or --from-file FILE)"),
        (["zap", "vm1"], "exactly one of --range START END, --all or --slot N"),
        (["vm", "create", "--type", "bogus"], "'bogus' is not one of"),
        (["nonsense"], "No such command 'nonsense'"),
    ],
)
def test_bad_usage_is_one_line_and_status_2(offline: Cli, args: list[str], needle: str) -> None:
    line = offline.fails(2, *args)
    assert needle in line
    assert line.startswith("kvmmu")


def test_unreachable_server_is_status_3(offline: Cli) -> None:
    server = f"127.0.0.1:{free_port()}"
    line = offline.fails(3, "--server", server, "vm", "list")
    assert line.startswith(f"kvmmu: cannot reach the kvmmu server at {server}")
    assert "KVMMU_SERVER" in line


def test_unreachable_health_is_status_3(offline: Cli) -> None:
    offline.fails(3, "--server", f"127.0.0.1:{free_port()}", "health", "--timeout", "2")


def test_completion_script(offline: Cli) -> None:
    assert "_KVMMU_COMPLETE=bash_complete" in offline.ok("completion", "bash")
    assert "compdef" in offline.ok("completion", "zsh")
