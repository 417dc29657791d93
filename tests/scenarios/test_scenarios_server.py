"""Every shipped scenario gives identical results offline and against a server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client.scenario.format import load
from tests.server.conftest import ServerProcess, start_server

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((REPO / "scenarios").glob("*.toml"))


def host_args(path: Path) -> tuple[str, ...]:
    scenario = load(path)
    args = ["--profile", scenario.profile]
    for name, value in sorted(scenario.host_set.items()):
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["--host-set", f"{name}={text}"]
    return tuple(args)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[tuple[str, ...], ServerProcess]]:
    """One server per distinct host configuration the scenarios need."""
    running: dict[tuple[str, ...], ServerProcess] = {}
    try:
        for path in SCENARIOS:
            args = host_args(path)
            if args not in running:
                running[args] = start_server("--state-dir", "none", "--log-level", "error", *args)
        yield running
    finally:
        for srv in running.values():
            srv.stop()


def run(path: Path, *extra: str) -> list[dict[str, object]]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "client.cli",
            *extra[:2],
            "--json",
            "scenario",
            "run",
            str(path),
            *extra[2:],
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_offline_and_server_agree(
    path: Path, servers: dict[tuple[str, ...], ServerProcess]
) -> None:
    srv = servers[host_args(path)]
    offline = run(path, "--server", "127.0.0.1:1", "--offline")
    online = run(path, "--server", srv.address)
    assert all(step["ok"] for step in online)
    # Refusal messages name fields the way each side does; that a step was refused,
    # and everything else, must match.
    for steps in (online, offline):
        for step in steps:
            step["refused"] = step["refused"] is not None
    assert online == offline


def test_server_with_another_host_is_refused(servers: dict[tuple[str, ...], ServerProcess]) -> None:
    path = REPO / "scenarios" / "vmx-vs-tdx-mmio.toml"
    other = next(srv for args, srv in servers.items() if args != host_args(path))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "client.cli",
            "--server",
            other.address,
            "scenario",
            "run",
            str(path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "needs host profile 'intel-tdx'" in proc.stderr


def test_a_malformed_file_runs_nothing_on_the_server(
    servers: dict[tuple[str, ...], ServerProcess], tmp_path: Path
) -> None:
    """Step 0 is fine, step 1 has a typo: refused at load (exit 2), no VM is created."""
    path = REPO / "scenarios" / "vmx-vs-tdx-mmio.toml"
    srv = servers[host_args(path)]
    bad = tmp_path / "typo.toml"
    bad.write_text(
        path.read_text().replace('outcome = "RET_PF_EMULATE", level = 1', 'outcome = "EMULATED"', 1)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "client.cli", "--server", srv.address, "scenario", "run", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert f"{bad}: steps[2].expect.outcome: unknown outcome 'EMULATED'" in proc.stderr
    with client.connect(srv.address, timeout=10) as kvm:
        assert list(kvm.list_vms()) == []
