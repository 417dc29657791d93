"""Graceful shutdown: SIGTERM/SIGINT, health NOT_SERVING, in-flight calls finish, exit 0."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvmmu.v1 import common_pb2, events_pb2, fault_pb2, service_pb2_grpc
from tests.server.conftest import add_slot, create_vm, start_server

pytestmark = pytest.mark.timeout(60)
FAULTS = 150_000


def test_sigterm_finishes_in_flight_call_and_exits_zero():
    srv = start_server("--max-batch-size", str(FAULTS), "--shutdown-drain", "5", "--grace", "30")
    channel = srv.channel()
    try:
        stub = service_pb2_grpc.MmuServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        vm = create_vm(stub, tracing_enabled=True)  # tracing: the slow, scalar fault path
        add_slot(stub, vm, size=1 << 32)
        gpas = (np.arange(FAULTS, dtype=np.uint64) << np.uint64(12)).tolist()
        result: dict[str, object] = {}

        def in_flight() -> None:
            try:
                request = fault_pb2.BatchFaultRequest(name=vm, gpas=gpas, shared_error_code=2)
                result["response"] = stub.BatchFault(request, timeout=60)
            except grpc.RpcError as err:
                result["error"] = err

        call = threading.Thread(target=in_flight)
        call.start()
        time.sleep(0.4)
        assert call.is_alive()  # the batch is still being served
        srv.proc.send_signal(signal.SIGTERM)
        statuses = set()
        # Within the drain period health answers NOT_SERVING; generous timeouts, as
        # the traced batch keeps the server busy (a loaded machine slowed a 1 s check).
        deadline = time.monotonic() + 4
        while (
            time.monotonic() < deadline
            and health_pb2.HealthCheckResponse.NOT_SERVING not in statuses
        ):
            try:
                statuses.add(health.Check(health_pb2.HealthCheckRequest(), timeout=3).status)
            except grpc.RpcError:
                break
            time.sleep(0.05)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
        call.join(60)
        assert "error" not in result, result
        response = result["response"]
        assert isinstance(response, fault_pb2.BatchFaultResponse)
        assert len(response.outcomes) == FAULTS
        assert set(response.outcomes) == {common_pb2.FAULT_OUTCOME_FIXED}
        assert srv.proc.wait(30) == 0
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()
        srv.stop()


def test_sigint_with_an_open_follower_exits_zero_promptly():
    srv = start_server("--shutdown-drain", "0", "--grace", "30")
    channel = srv.channel()
    try:
        stub = service_pb2_grpc.MmuServiceStub(channel)
        vm = create_vm(stub, tracing_enabled=True)
        stream = stub.WatchEvents(events_pb2.WatchEventsRequest(name=vm, follow=True), timeout=30)
        stream.initial_metadata()
        start = time.monotonic()
        srv.proc.send_signal(signal.SIGINT)
        assert list(stream) == []  # the follower ends cleanly when the server stops
        assert srv.proc.wait(30) == 0
        assert time.monotonic() - start < 10
        assert "stopped" in srv.proc.stdout.read()
    finally:
        channel.close()
        srv.stop()


def test_a_reader_gone_from_stdout_does_not_spoil_the_stop():
    srv = start_server("--state-dir", "none")
    assert srv.proc.stdout is not None
    srv.proc.stdout.close()  # e.g. `kvmmu-server | head -3`: the last line cannot be written
    assert srv.stop() == 0
    assert "Traceback" not in srv.log.read_text()
