"""A real kvmmu-server in a subprocess on a free loopback port, and real channels to it."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from kvmmu.v1 import memslot_pb2, service_pb2_grpc, vm_pb2

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
_ids = itertools.count()


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int
    log: Path
    banner: list[str]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


def start_server(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """Start `python -m server.main` on 127.0.0.1:0 and wait for its bound port."""
    fd, name = tempfile.mkstemp(prefix="kvmmu-server-", suffix=".log")
    log = Path(name)
    with os.fdopen(fd, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.main", "--listen", "127.0.0.1:0", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, **(env or {})},
        )
    assert proc.stdout is not None
    banner: list[str] = []
    for line in proc.stdout:
        banner.append(line)
        if "listening on" in line:
            return ServerProcess(proc, int(line.rsplit(":", 1)[1]), log, banner)
    proc.wait(10)
    proc.stdout.close()
    raise RuntimeError(f"server did not start: {log.read_text()}")


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    srv = start_server("--state-dir", "none", "--max-vms", "200", "--log-level", "warning")
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="session")
def tight_server() -> Iterator[ServerProcess]:
    """A server with tiny limits, for the RESOURCE_EXHAUSTED paths."""
    srv = start_server(
        "--max-vms", "3",
        "--max-memslots-per-vm", "2",
        "--max-batch-size", "64",
        "--max-tables-per-vm", "9",
        "--max-concurrent-streams", "2",
        "--max-page-size", "5",
        "--default-page-size", "2",
        "--log-level", "error",
    )  # fmt: skip
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="session")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with server.channel() as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> service_pb2_grpc.MmuServiceStub:
    return service_pb2_grpc.MmuServiceStub(channel)


def unique_id(prefix: str = "t") -> str:
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


def create_vm(stub: service_pb2_grpc.MmuServiceStub, **vm: Any) -> str:
    """Create a VM with a fresh id; returns its name."""
    vm_id = unique_id()
    stub.CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id, vm=vm_pb2.Vm(**vm)))
    return f"vms/{vm_id}"


def add_slot(
    stub: service_pb2_grpc.MmuServiceStub,
    vm: str,
    slot: int = 0,
    gpa: int = 0,
    size: int = 1 << 30,
    **fields: Any,
) -> memslot_pb2.SetMemslotResponse:
    memslot = memslot_pb2.Memslot(slot=slot, guest_phys_addr=gpa, memory_size=size, **fields)
    response: memslot_pb2.SetMemslotResponse = stub.SetMemslot(
        memslot_pb2.SetMemslotRequest(parent=vm, memslot=memslot)
    )
    return response


@dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    status: status_pb2.Status

    def detail(self, kind: type[T]) -> T:
        for any_detail in self.status.details:
            msg = kind()  # type: ignore[call-arg]
            if any_detail.Unpack(msg):  # type: ignore[arg-type]
                return msg
        raise AssertionError(f"no {kind.__name__} in {self.status}")

    @property
    def field(self) -> str:
        violations = self.detail(error_details_pb2.BadRequest).field_violations
        assert len(violations) == 1
        return str(violations[0].field)

    @property
    def info(self) -> error_details_pb2.ErrorInfo:
        return self.detail(error_details_pb2.ErrorInfo)


def fails(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Failure:
    """Call an RPC that must fail; its code, message and google.rpc.Status."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as err:
        assert isinstance(err, grpc.Call)
        status = rpc_status.from_call(err)
        assert status is not None, f"no rich status: {err.code()} {err.details()}"
        return Failure(err.code(), err.details() or "", status)
    raise AssertionError("the call succeeded")
