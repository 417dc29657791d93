"""The real `kvmmu` command (a subprocess) against a real server on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.server.conftest import ServerProcess, start_server, unique_id

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run_cli(*args: str, server: str | None, stdin: str | None = None, cwd: Path = REPO) -> Result:
    """Run `python -m client.cli ARGS` with KVMMU_SERVER set; stdout/stderr are pipes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVMMU_", "FORCE_COLOR"))}
    env["COLUMNS"] = "200"
    env["PYTHONPATH"] = str(REPO)  # the checkout's packages, wherever the command runs
    if server is not None:
        env["KVMMU_SERVER"] = server
    proc = subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


class Cli:
    """Runs kvmmu against one server; `ok` asserts success, `fails` a given exit status."""

    def __init__(self, server: str | None) -> None:
        self.server = server

    def __call__(self, *args: str, stdin: str | None = None) -> Result:
        return run_cli(*args, server=self.server, stdin=stdin)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.code == 0, f"kvmmu {' '.join(args)} -> {result.code}: {result.err}"
        return result.out

    def fails(self, code: int, *args: str, stdin: str | None = None) -> str:
        """The one stderr line of a failing command."""
        result = self(*args, stdin=stdin)
        assert result.code == code, f"kvmmu {' '.join(args)} -> {result}"
        assert "Traceback" not in result.err
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result.err
        return lines[0]


@pytest.fixture(scope="session")
def cli_server() -> Iterator[ServerProcess]:
    srv = start_server("--state-dir", "none", "--log-level", "error")
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="session")
def tdx_server() -> Iterator[ServerProcess]:
    srv = start_server("--state-dir", "none", "--log-level", "error", "--profile", "intel-tdx")
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="session")
def kvmmu(cli_server: ServerProcess) -> Cli:
    return Cli(cli_server.address)


@pytest.fixture(scope="session")
def kvmmu_tdx(tdx_server: ServerProcess) -> Cli:
    return Cli(tdx_server.address)


@pytest.fixture(scope="session")
def offline() -> Cli:
    return Cli(None)


@pytest.fixture
def vm(kvmmu: Cli) -> str:
    """A fresh default VM with a 1G memslot at GPA 0 and tracing on."""
    vm_id = unique_id("cli")
    kvmmu.ok("vm", "create", "--id", vm_id, "--tracing")
    kvmmu.ok("memslot", "set", vm_id, "--slot", "0", "--gpa", "0", "--size", "1G")
    return vm_id


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
