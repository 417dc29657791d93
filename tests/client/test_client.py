"""The client library against a real server: values, pagination, streams, errors."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import numpy as np
import pytest

import client
from client.enums import (
    BackingPageSize,
    ErrorCode,
    FaultOutcome,
    HealthStatus,
    MemslotChange,
    SpteKind,
    TdpRoot,
    VmType,
)
from client.events import KvmMmuSetSpteEvent
from client.results import SpteEntry
from tests.cli.conftest import free_port
from tests.client.conftest import CountingInterceptor
from tests.server.conftest import ServerProcess, unique_id


def counted(address: str) -> tuple[client.Client, CountingInterceptor]:
    counter = CountingInterceptor()
    channel = grpc.intercept_channel(grpc.insecure_channel(address), counter)
    return client.Client.for_channel(channel), counter


def make_vm(kvm: client.Client, vm_type: VmType = VmType.DEFAULT) -> str:
    vm_id = unique_id("lib")
    kvm.create_vm(vm_type, vm_id=vm_id, tracing_enabled=True)
    kvm.set_memslot(vm_id, 0, guest_phys_addr=0, memory_size=1 << 30)
    return vm_id


def test_values_are_plain_python(kvm: client.Client) -> None:
    vm_id = unique_id("lib")
    vm = kvm.create_vm(VmType.SW_PROTECTED, vm_id=vm_id, display_name="x", mt_bits=0x70)
    assert vm.vm_type is VmType.SW_PROTECTED and vm.vm_type.kvm_type == 1
    assert (vm.name, vm.vm_id, vm.display_name, vm.mmio_value) == (f"vms/{vm_id}", vm_id, "x", 6)
    assert vm.mt_bits == 0x70 and vm.tdp_has_smep is None and vm.stats is None
    assert isinstance(vm.create_time, datetime) and vm.create_time.tzinfo == UTC
    full = kvm.get_vm(f"vms/{vm_id}", stats=True)
    assert full.stats is not None and full.stats.pf_taken == 0
    assert full.proto.vm_id == vm_id  # the message it came from
    assert kvm.get_vm(vm_id) == vm  # equality ignores .proto
    host = kvm.get_host()
    assert host.globals.shadow_mmio_value == 6 and host.config.phys_bits == 46
    assert [s.vm_type for s in host.vm_types][:2] == [VmType.DEFAULT, VmType.SW_PROTECTED]
    kvm.delete_vm(vm_id)
    with pytest.raises(client.NotFound):
        kvm.get_vm(vm_id)


def test_list_calls_follow_every_page(small_server: ServerProcess) -> None:
    kvm, counter = counted(small_server.address)
    with kvm:
        made = {make_vm(kvm) for _ in range(5)}
        before = counter.calls["ListVms"]
        listed = [vm.vm_id for vm in kvm.list_vms()]  # server default page size: 2
        assert made <= set(listed) and listed == sorted(listed)
        assert counter.calls["ListVms"] - before >= 3
        assert [vm.vm_id for vm in kvm.list_vms(page_size=3)] == listed
        vm_id = next(iter(made))
        for slot in (1, 2, 3, 4):
            kvm.set_memslot(vm_id, slot, guest_phys_addr=slot << 32, memory_size=4096)
        before = counter.calls["ListMemslots"]
        assert [m.slot for m in kvm.list_memslots(vm_id)] == [0, 1, 2, 3, 4]
        assert counter.calls["ListMemslots"] - before == 3
        profiles = [p.profile_id for p in kvm.list_host_profiles(page_size=1)]
        assert "intel-tdx" in profiles and len(profiles) == len(set(profiles)) >= 6


def test_lists_are_lazy(small_server: ServerProcess) -> None:
    kvm, counter = counted(small_server.address)
    with kvm:
        for _ in range(3):
            make_vm(kvm)
        pages = kvm.list_vms()
        assert counter.calls["ListVms"] == 0
        next(pages)
        assert counter.calls["ListVms"] == 1


def test_memslots_faults_and_batches(kvm: client.Client) -> None:
    vm_id = make_vm(kvm)
    result = kvm.set_memslot(
        vm_id, 1, guest_phys_addr=4 << 30, memory_size=2 << 20,
        backing_page_size=BackingPageSize.SIZE_2M, log_dirty_pages=True,
    )  # fmt: skip
    assert result.outcome.change is MemslotChange.CREATE
    assert result.memslot.backing_page_size is BackingPageSize.SIZE_2M
    fault = kvm.fault(vm_id, 0x1000, ErrorCode.WRITE | ErrorCode.USER, explain=True)
    assert fault.outcome is FaultOutcome.FIXED and fault.gfn == 1 and fault.level == 1
    assert fault.spte == 0x8600000000001B77 and fault.root is TdpRoot.DIRECT
    assert fault.mmio_check is None and fault.memory_fault is None
    assert fault.explanation and fault.explanation[-1].function == "kvm_mmu_page_fault"
    set_spte = [e.fields for e in fault.events if e.name == "kvm_mmu_set_spte"]
    assert isinstance(set_spte[0], KvmMmuSetSpteEvent) and set_spte[0].spte == fault.spte
    batch = kvm.batch_fault(vm_id, [0x1000, 0x2000, 0xFEE00000], error_code=ErrorCode.WRITE)
    assert batch.sptes.dtype == np.uint64 and len(batch) == 3
    assert [r.outcome for r in batch.rows()] == [
        FaultOutcome.SPURIOUS,
        FaultOutcome.FIXED,
        FaultOutcome.EMULATE,
    ]
    assert batch.counts() == {
        FaultOutcome.SPURIOUS: 1,
        FaultOutcome.FIXED: 1,
        FaultOutcome.EMULATE: 1,
    }
    per_fault = kvm.batch_fault(vm_id, [0x3000, 0x4000], [0, ErrorCode.WRITE])
    assert per_fault.gfns.tolist() == [3, 4]
    log = kvm.get_dirty_log(vm_id, 1)
    assert (log.base_gfn, log.npages, log.dirty_count) == (0x100000, 512, 0)


def test_streams_give_numpy_chunks_and_rows(kvm: client.Client) -> None:
    vm_id = make_vm(kvm)
    for lo in range(1, 40, 16):  # the server takes 16 faults per batch
        gpas = [i << 12 for i in range(lo, min(lo + 16, 40))]
        kvm.batch_fault(vm_id, gpas, error_code=ErrorCode.WRITE)
    with kvm.stream_sptes(vm_id, chunk_size=16) as stream:
        chunks = list(stream)
    assert len(chunks) == 3 and sum(len(c) for c in chunks) == 39
    assert chunks[0].values.dtype == np.uint64 and chunks[0].gfns.dtype == np.uint64
    rows = [row for chunk in chunks for row in chunk.rows()]
    assert rows[0] == SpteEntry(TdpRoot.DIRECT, 1, 1, 0x8600000000001B77)
    ranged = [r for c in kvm.stream_sptes(vm_id, start_gfn=10, end_gfn=12) for r in c.rows()]
    assert [r.gfn for r in ranged] == [10, 11]
    decoded = kvm.decode_spte(rows[0].value, vm=vm_id, level=1)
    assert decoded.kind is SpteKind.LEAF and decoded.pfn == 1 and decoded.access == "rwxu"
    assert decoded.predicates.is_shadow_present_pte and decoded.mmio is None
    assert kvm.decode_spte(0, profile="intel-tdx", mmio_value=0).kind is SpteKind.MMIO
    assert kvm.zap_sptes(vm_id, start_gfn=1, end_gfn=3).spte_changes == 2
    assert kvm.age_sptes(vm_id, 0, 1 << 18, test_only=True).young is True


def test_watch_events_replays_follows_and_cancels(kvm: client.Client) -> None:
    vm_id = make_vm(kvm)
    kvm.fault(vm_id, 0x1000)
    backlog = [e for batch in kvm.watch_events(vm_id, from_sequence=1) for e in batch.events]
    assert backlog[0].sequence == 1 and backlog[-1].name == "kvm_mmu_set_spte"
    stream = kvm.watch_events(vm_id, follow=True, names=["kvm_mmu_set_spte"])
    kvm.fault(vm_id, 0x2000)
    first = next(stream)
    assert [e.name for e in first.events] == ["kvm_mmu_set_spte"]
    stream.cancel()
    with pytest.raises(client.Cancelled):
        next(stream)


def test_invalid_argument_carries_field_violations(kvm: client.Client) -> None:
    vm_id = make_vm(kvm)
    with pytest.raises(client.InvalidArgument) as caught:
        kvm.set_memslot(vm_id, 1, guest_phys_addr=4 << 30, memory_size=100)
    err = caught.value
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.field_violations == (
        client.FieldViolation("memslot.memory_size", "must be a multiple of 4096"),
    )
    assert err.field == "memslot.memory_size"
    assert err.error_info is not None and err.error_info.domain == "kvmmu.v1"
    assert isinstance(err.__cause__, grpc.RpcError)
    assert str(err).startswith("INVALID_ARGUMENT: memslot.memory_size")


def test_error_classes(kvm: client.Client) -> None:
    with pytest.raises(client.NotFound) as missing:
        kvm.get_vm("no-such-vm")
    info = missing.value.resource_info
    assert info is not None and info.resource_name == "vms/no-such-vm"
    vm_id = make_vm(kvm)
    with pytest.raises(client.AlreadyExists):
        kvm.create_vm(vm_id=vm_id)
    with pytest.raises(client.FailedPrecondition) as refused:
        kvm.create_vm(VmType.TDX)
    assert refused.value.violations and refused.value.field == "vm.vm_type"
    with pytest.raises(client.ResourceExhausted) as limit:
        kvm.batch_fault(vm_id, list(range(0, 17 << 12, 1 << 12)))
    assert limit.value.violations[0].subject == "max_batch_size"
    assert isinstance(missing.value, client.KvmmuError)


def test_unreachable_server() -> None:
    with (
        client.connect(f"127.0.0.1:{free_port()}", retry=client.NO_RETRY) as kvm,
        pytest.raises(client.Unavailable) as caught,
    ):
        kvm.get_host()
    assert isinstance(caught.value, client.ServerUnreachable)


def test_health(kvm: client.Client) -> None:
    assert kvm.health() is HealthStatus.SERVING
    assert kvm.health("kvmmu.v1.MmuService") is HealthStatus.SERVING
    assert kvm.health("no.such.Service") is HealthStatus.SERVICE_UNKNOWN


def test_argument_mistakes_are_value_errors(kvm: client.Client) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        kvm.zap_sptes("vm", zap_all=True, slot=1)
    with pytest.raises(ValueError, match="display_name or tracing_enabled"):
        kvm.update_vm("vm")
    with pytest.raises(ValueError, match="either vm or"):
        kvm.decode_spte(0, vm="vm", profile="intel-ept")
