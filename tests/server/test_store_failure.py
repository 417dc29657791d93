"""After the durable store fails, the server shows nothing that is not durable."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.client import connect
from client.errors import StoreFailed
from kvmmu.v1 import service_pb2_grpc, vm_pb2
from server.app import create_server
from server.config import ServerConfig
from tests.server.conftest import REPO
from tests.server.durable_state import server_losing_its_disk


def code_of(call: object, request: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(request)  # type: ignore[operator]
    code: grpc.StatusCode = err.value.code()  # type: ignore[attr-defined]
    return code


def test_a_change_whose_record_failed_is_never_seen(tmp_path: Path) -> None:
    config = ServerConfig(state_dir=tmp_path / "s")
    with server_losing_its_disk(tmp_path / "s", "a", "b") as (port, stub, channel):
        # The delete took effect in memory before its record failed ...
        assert code_of(stub.DeleteVm, vm_pb2.DeleteVmRequest(name="vms/b")) == (
            grpc.StatusCode.UNAVAILABLE
        )
        # ... so no read may show it: every call is UNAVAILABLE, not NOT_FOUND.
        assert code_of(stub.GetVm, vm_pb2.GetVmRequest(name="vms/b")) == (
            grpc.StatusCode.UNAVAILABLE
        )
        assert code_of(stub.ListVms, vm_pb2.ListVmsRequest()) == grpc.StatusCode.UNAVAILABLE
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest()).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        # The client library and the CLI say what happened, not "cannot connect".
        with connect(f"127.0.0.1:{port}", timeout=10) as client:
            started = time.monotonic()
            with pytest.raises(StoreFailed):
                client.get_vm("a")
            assert time.monotonic() - started < 1  # not retried like a lost connection
        cli = subprocess.run(
            [sys.executable, "-m", "client.cli", "--server", f"127.0.0.1:{port}", "vm", "list"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert cli.returncode == 1 and "cannot store changes" in cli.stderr, cli.stderr
    restarted, port = create_server("127.0.0.1:0", config=config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.MmuServiceStub(channel)
            names = [vm.name for vm in stub.ListVms(vm_pb2.ListVmsRequest()).vms]
            assert names == ["vms/a", "vms/b"]  # the unacknowledged delete is not there
    finally:
        restarted.stop(grace=0)
