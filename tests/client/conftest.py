"""A real server (small pages and batches) for the client library, and in-process fakes
(real gRPC servers with scripted behaviour) for retries, deadlines, tokens and TLS."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

import client
from kvmmu.v1 import host_pb2, service_pb2_grpc, vm_pb2
from tests.server.conftest import ServerProcess, start_server


@pytest.fixture(scope="session")
def small_server() -> Iterator[ServerProcess]:
    srv = start_server(
        "--state-dir", "none",
        "--log-level", "error",
        "--default-page-size", "2",
        "--max-page-size", "3",
        "--max-batch-size", "16",
    )  # fmt: skip
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def kvm(small_server: ServerProcess) -> Iterator[client.Client]:
    with client.connect(small_server.address) as c:
        yield c


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the unary calls of each method that leave the client."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        self.calls[details.method.rsplit("/", 1)[-1]] += 1
        return continuation(details, request)


class ScriptedService(service_pb2_grpc.MmuServiceServicer):
    """Fails the first `unavailable` calls of each method with UNAVAILABLE, records the
    metadata it sees, and answers GetHost after `delay` seconds."""

    def __init__(self, unavailable: int = 0, delay: float = 0.0) -> None:
        self.unavailable = unavailable
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.metadata: list[dict[str, str]] = []

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls[method] += 1
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
        if self.calls[method] <= self.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")

    def GetVm(  # noqa: N802 - the RPC's name
        self, request: vm_pb2.GetVmRequest, context: grpc.ServicerContext
    ) -> vm_pb2.Vm:
        self._enter("GetVm", context)
        return vm_pb2.Vm(name=request.name, vm_id=request.name.removeprefix("vms/"))

    def CreateVm(  # noqa: N802 - the RPC's name
        self, request: vm_pb2.CreateVmRequest, context: grpc.ServicerContext
    ) -> vm_pb2.Vm:
        self._enter("CreateVm", context)
        return vm_pb2.Vm(name=f"vms/{request.vm_id}", vm_id=request.vm_id)

    def GetHost(  # noqa: N802 - the RPC's name
        self, request: host_pb2.GetHostRequest, context: grpc.ServicerContext
    ) -> host_pb2.Host:
        self._enter("GetHost", context)
        time.sleep(self.delay)
        return host_pb2.Host(name="host")


@dataclass
class Fake:
    service: ScriptedService
    address: str


def serve(
    service: ScriptedService, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_MmuServiceServicer_to_server(service, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def fake() -> Iterator[Callable[..., Fake]]:
    started: list[grpc.Server] = []

    def make(**kwargs: Any) -> Fake:
        service = ScriptedService(**kwargs)
        server, address = serve(service)
        started.append(server)
        return Fake(service, address)

    yield make
    for server in started:
        server.stop(0)


@dataclass(frozen=True)
class Pki:
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A self-signed certificate for 127.0.0.1 (CA, server and client certificate at once)."""
    folder = tmp_path_factory.mktemp("pki")
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    return Pki(cert, key)
