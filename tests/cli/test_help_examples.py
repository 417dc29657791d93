"""The examples in `kvmmu ... --help`: plausible everywhere, and run where they run offline."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import click
import pytest

from client.cli import cli
from tests.cli.conftest import REPO, run_cli

GPAW = 52  # the widest guest physical address (TDX's GPAW 52: shared bit 51)


def _commands(group: click.Group, prefix: str = "kvmmu") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = [(prefix, group)]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix} {name}")
        else:
            found.append((f"{prefix} {name}", command))
    return found


def _examples() -> list[list[str]]:
    """Every `kvmmu ...` line of every help text, as argv (after 'kvmmu', comments cut)."""
    found: list[list[str]] = []
    for _, command in _commands(cli):
        for line in (command.epilog or "").splitlines():
            text = line.strip()
            # `trace-cmd report | kvmmu ...`: the kvmmu part.
            text = text.rsplit("| ", 1)[-1] if "| kvmmu" in text else text
            if text.startswith("kvmmu "):
                words = shlex.split(text, comments=True)
                found.append(words[1 : words.index("|")] if "|" in words else words[1:])
    return found


EXAMPLES = _examples()


def _params(args: list[str]) -> dict[str, object]:
    """The parameters click parses from an example (values converted, files not opened)."""
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group) and rest:
        options = {o: p for p in command.params if isinstance(p, click.Option) for o in p.opts}
        while rest and rest[0] in options:  # the group's own options (kvmmu --json ...)
            rest = rest[1 if options[rest[0]].is_flag else 2 :]
        if not rest:  # `kvmmu host`: a group that runs by itself
            break
        command = command.commands[rest.pop(0)]
    ctx = command.make_context(command.name or "", rest, resilient_parsing=True)
    return ctx.params


def test_there_are_examples_to_check() -> None:
    assert len(EXAMPLES) > 40
    assert sum(1 for a in EXAMPLES if a[0] == "fault") >= 5


@pytest.mark.parametrize("args", EXAMPLES, ids=[" ".join(a) for a in EXAMPLES])
def test_example_addresses_fit_in_the_widest_gpaw(args: list[str]) -> None:
    """A GPA of 2^52 or more faults as INVALID_ARGUMENT on every VM: such an example
    (`fault td1 0x8000000feb00000`: bit 59) cannot show what its comment says."""
    params = _params(args)
    addresses = [params.get(name) for name in ("gpa", "start", "end")]
    gpa_range = params.get("gpa_range")  # zap --range START END
    addresses += list(gpa_range) if isinstance(gpa_range, tuple) else []
    for value in addresses:
        assert value is None or isinstance(value, int)
        assert value is None or value < 1 << GPAW, f"{value:#x} in kvmmu {' '.join(args)}"


def _offline(args: list[str]) -> bool:
    """Examples that need no server: --offline runs, decode --profile, trace decode,
    report --scenario; not the ones that start or name a server."""
    return (
        "--offline" in args
        or (args[0] == "decode" and "--profile" in args)
        or args[:2] == ["trace", "decode"]
        or (args[0] == "report" and "--scenario" in args)
    )


OFFLINE = [a for a in EXAMPLES if _offline(a)]


def test_the_offline_examples_include_each_kind() -> None:
    kinds = {a[0] for a in OFFLINE}
    assert kinds >= {"decode", "scenario", "trace", "report"}


@pytest.mark.parametrize("args", OFFLINE, ids=[" ".join(a) for a in OFFLINE])
def test_offline_example_runs(args: list[str], tmp_path: Path) -> None:
    """Run in a directory holding what the examples name: scenarios/ and trace.txt."""
    (tmp_path / "scenarios").symlink_to(REPO / "scenarios")
    shutil.copy(REPO / "tests" / "data" / "sample-kvmmmu-trace.txt", tmp_path / "trace.txt")
    stdin = (tmp_path / "trace.txt").read_text() if "-" in args else None
    result = run_cli(*args, server=None, stdin=stdin, cwd=tmp_path)
    assert result.code == 0, f"kvmmu {' '.join(args)} -> {result.code}: {result.err}"
    assert result.out
