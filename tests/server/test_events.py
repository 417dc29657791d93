"""WatchEvents: backlog from a sequence number, from now, following, filters."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from kvmmu.v1 import events_pb2, fault_pb2, vm_pb2
from tests.server.conftest import add_slot, create_vm, fails

pytestmark = pytest.mark.timeout(30)
Code = grpc.StatusCode
EV = events_pb2


def fault(stub, vm: str, gpa: int) -> fault_pb2.FaultResponse:
    return stub.Fault(fault_pb2.FaultRequest(name=vm, gpa=gpa, error_code=0x2))


def events(responses) -> list[events_pb2.Event]:
    return [e for r in responses for e in r.events]


def test_backlog_from_sequence(stub):
    vm = create_vm(stub, tracing_enabled=True)
    add_slot(stub, vm)
    first = fault(stub, vm, 0x1000)
    fault(stub, vm, 0x2000)
    backlog = events(stub.WatchEvents(EV.WatchEventsRequest(name=vm, from_sequence=1)))
    assert [e.sequence for e in backlog] == list(range(1, len(backlog) + 1))
    assert [e.name for e in backlog[: len(first.events)]] == [e.name for e in first.events]
    tail = events(stub.WatchEvents(EV.WatchEventsRequest(name=vm, from_sequence=5)))
    assert tail[0].sequence == 5 and len(tail) == len(backlog) - 4
    only = events(
        stub.WatchEvents(
            EV.WatchEventsRequest(name=vm, from_sequence=1, names=["kvm_mmu_set_spte"])
        )
    )
    assert [e.kvm_mmu_set_spte.gfn for e in only] == [1, 2]
    assert list(stub.WatchEvents(EV.WatchEventsRequest(name=vm))) == []  # from now, no follow


def test_untraced_vm_logs_nothing(stub):
    vm = create_vm(stub)
    add_slot(stub, vm)
    fault(stub, vm, 0x1000)
    assert events(stub.WatchEvents(EV.WatchEventsRequest(name=vm, from_sequence=1))) == []


def test_follow_streams_new_events_until_cancelled(stub):
    vm = create_vm(stub)
    add_slot(stub, vm)
    fault(stub, vm, 0x1000)  # before tracing: never logged
    stub.UpdateVm(vm_pb2.UpdateVmRequest(vm=vm_pb2.Vm(name=vm, tracing_enabled=True)))
    stream = stub.WatchEvents(EV.WatchEventsRequest(name=vm, follow=True))
    received: list[events_pb2.Event] = []
    done = threading.Event()

    def read() -> None:
        try:
            for response in stream:
                received.extend(response.events)
                if any(
                    e.name == "kvm_mmu_set_spte" and e.kvm_mmu_set_spte.gfn == 3 for e in received
                ):
                    break
        finally:
            done.set()

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    fault(stub, vm, 0x2000)
    fault(stub, vm, 0x3000)
    assert done.wait(10)
    reader.join()
    stream.cancel()
    gfns = [e.kvm_mmu_set_spte.gfn for e in received if e.name == "kvm_mmu_set_spte"]
    assert gfns == [2, 3]
    assert received[0].sequence == 1


def test_follow_ends_promptly_on_cancel_and_on_delete(stub):
    vm = create_vm(stub, tracing_enabled=True)
    stream = stub.WatchEvents(EV.WatchEventsRequest(name=vm, follow=True))
    timer = threading.Timer(0.3, stream.cancel)
    start = time.monotonic()
    timer.start()
    with pytest.raises(grpc.RpcError) as err:
        list(stream)
    assert err.value.code() == Code.CANCELLED and time.monotonic() - start < 5
    stream = stub.WatchEvents(EV.WatchEventsRequest(name=vm, follow=True))
    threading.Timer(0.3, lambda: stub.DeleteVm(vm_pb2.DeleteVmRequest(name=vm))).start()
    with pytest.raises(grpc.RpcError) as err:
        list(stream)
    assert err.value.code() == Code.NOT_FOUND


def test_watch_errors(stub):
    vm = create_vm(stub)
    zero = fails(
        lambda r: list(stub.WatchEvents(r)), EV.WatchEventsRequest(name=vm, from_sequence=0)
    )
    assert (zero.code, zero.field) == (Code.INVALID_ARGUMENT, "from_sequence")
    gone = fails(lambda r: list(stub.WatchEvents(r)), EV.WatchEventsRequest(name="vms/gone"))
    assert gone.code == Code.NOT_FOUND
