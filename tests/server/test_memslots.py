"""SetMemslot (KVM_SET_USER_MEMORY_REGION2 style), Get/List/DeleteMemslot, memory attributes."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from kvmmu.v1 import common_pb2, fault_pb2, memslot_pb2, vm_pb2
from tests.server.conftest import add_slot, create_vm, fails

pytestmark = pytest.mark.timeout(60)
Code = grpc.StatusCode
MS = memslot_pb2


def test_create_move_flags_noop(stub):
    vm = create_vm(stub)
    created = add_slot(stub, vm, slot=3, gpa=0x40000000, size=0x200000)
    assert created.memslot.name == f"{vm}/memslots/3"
    assert created.memslot.base_gfn == 0x40000 and created.memslot.npages == 512
    assert created.outcome.change == MS.MEMSLOT_CHANGE_CREATE
    assert created.outcome.result == MS.MEMSLOT_CHANGE_RESULT_APPLIED
    assert created.outcome.generation == 2
    stub.Fault(fault_pb2.FaultRequest(name=vm, gpa=0x40000000, error_code=0x2))
    moved = add_slot(stub, vm, slot=3, gpa=0x80000000, size=0x200000)
    assert moved.outcome.change == MS.MEMSLOT_CHANGE_MOVE
    assert moved.outcome.zap == MS.MEMSLOT_ZAP_FAST_ZAP_ALL
    assert moved.outcome.generation == 6 and moved.outcome.spte_changes > 0
    assert moved.memslot.guest_phys_addr == 0x80000000
    flags = add_slot(stub, vm, slot=3, gpa=0x80000000, size=0x200000, log_dirty_pages=True)
    assert flags.outcome.change == MS.MEMSLOT_CHANGE_FLAGS_ONLY
    assert flags.memslot.log_dirty_pages
    same = add_slot(stub, vm, slot=3, gpa=0x80000000, size=0x200000, log_dirty_pages=True)
    assert same.outcome.result == MS.MEMSLOT_CHANGE_RESULT_NOOP
    assert same.outcome.generation == flags.outcome.generation


def test_set_memslot_refusals_change_nothing(stub):
    vm = create_vm(stub)
    add_slot(stub, vm, slot=0, gpa=0, size=0x100000)
    before = stub.GetVm(vm_pb2.GetVmRequest(name=vm)).memslots_generation
    resize = fails(add_slot, stub, vm, slot=0, gpa=0, size=0x200000)
    assert resize.code == Code.FAILED_PRECONDITION
    assert resize.info.metadata["errno"] == "EINVAL"
    assert resize.info.metadata["field"] == "memslot.memory_size"
    readonly = fails(add_slot, stub, vm, slot=0, gpa=0, size=0x100000, readonly=True)
    assert readonly.info.metadata["field"] == "memslot.readonly"
    overlap = fails(add_slot, stub, vm, slot=1, gpa=0x80000, size=0x100000)
    assert overlap.code == Code.ALREADY_EXISTS
    assert overlap.info.metadata["errno"] == "EEXIST"
    violation = overlap.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert violation.subject == "memslot.guest_phys_addr"
    gmem = fails(
        add_slot,
        stub,
        vm,
        slot=2,
        gpa=0x1000000,
        guest_memfd=True,
        gmem_pfn_base=0,
        log_dirty_pages=True,
    )
    assert gmem.code == Code.FAILED_PRECONDITION
    assert gmem.info.metadata["field"] == "memslot.guest_memfd"
    assert stub.GetVm(vm_pb2.GetVmRequest(name=vm)).memslots_generation == before
    listed = stub.ListMemslots(MS.ListMemslotsRequest(parent=vm)).memslots
    assert [s.slot for s in listed] == [0] and listed[0].memory_size == 0x100000


def test_any_vm_type_may_back_a_memslot_with_guest_memfd(stub):
    # CONFIG_KVM_GUEST_MEMFD: a default VM's guest_memfd slot maps its shared pages
    # from the userspace mapping, like any slot (spec 4.3, 8.6).
    vm = create_vm(stub)
    added = add_slot(stub, vm, slot=0, gpa=0, size=0x200000, guest_memfd=True, gmem_pfn_base=0)
    assert added.memslot.guest_memfd
    fault = stub.Fault(fault_pb2.FaultRequest(name=vm, gpa=0x1000, error_code=0x2))
    assert fault.outcome == common_pb2.FAULT_OUTCOME_FIXED and not fault.private


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"guest_phys_addr": 0x1001}, "memslot.guest_phys_addr"),
        ({"memory_size": 0}, "memslot.memory_size"),
        ({"memory_size": 0x1800}, "memslot.memory_size"),
        ({"memory_size": 1 << 43}, "memslot.memory_size"),  # 2**31 pages
        ({"slot": 40000}, "memslot.slot"),
        ({"userspace_addr": 0x123}, "memslot.userspace_addr"),
        ({"backing_page_size": 9}, "memslot.backing_page_size"),
        ({"guest_memfd": True}, "memslot.gmem_pfn_base"),
        ({"guest_phys_addr": 1 << 62}, "memslot.memory_size"),
    ],
)
def test_set_memslot_bad_fields(stub, fields, field):
    vm = create_vm(stub)
    memslot = MS.Memslot(**{"memory_size": 0x1000, **fields})
    failure = fails(stub.SetMemslot, MS.SetMemslotRequest(parent=vm, memslot=memslot))
    assert (failure.code, failure.field) == (Code.INVALID_ARGUMENT, field)


def test_host_rejected_pfn_is_failed_precondition(stub):
    vm = create_vm(stub)
    failure = fails(add_slot, stub, vm, size=0x1000, host_pfn_base=1 << 40)
    assert failure.code == Code.FAILED_PRECONDITION
    assert failure.field == "memslot.host_pfn_base"


def test_memslot_names_and_not_found(stub):
    vm = create_vm(stub)
    bad_parent = fails(stub.SetMemslot, MS.SetMemslotRequest(parent="vms/", memslot=MS.Memslot()))
    assert (bad_parent.code, bad_parent.field) == (Code.INVALID_ARGUMENT, "parent")
    missing = fails(stub.SetMemslot, MS.SetMemslotRequest(parent=vm))
    assert missing.field == "memslot"
    for call, request in (
        (stub.GetMemslot, MS.GetMemslotRequest(name=f"{vm}/memslots/4")),
        (stub.DeleteMemslot, MS.DeleteMemslotRequest(name=f"{vm}/memslots/4")),
    ):
        failure = fails(call, request)
        assert failure.code == Code.NOT_FOUND
        info = failure.detail(error_details_pb2.ResourceInfo)
        assert info.resource_name == f"{vm}/memslots/4"
    for name in (
        f"{vm}/memslots/04",
        f"{vm}/memslots/x",
        f"{vm}/memslots/99999",
        "vms//memslots/1",
    ):
        failure = fails(stub.GetMemslot, MS.GetMemslotRequest(name=name))
        assert (failure.code, failure.field) == (Code.INVALID_ARGUMENT, "name")
    gone = fails(stub.ListMemslots, MS.ListMemslotsRequest(parent="vms/absent"))
    assert gone.code == Code.NOT_FOUND


def test_get_list_delete(stub):
    vm = create_vm(stub)
    for slot in (10, 2, 1, 7):
        add_slot(stub, vm, slot=slot, gpa=slot << 30, size=0x10000)
    got = stub.GetMemslot(MS.GetMemslotRequest(name=f"{vm}/memslots/7"))
    assert got.guest_phys_addr == 7 << 30 and got.backing_page_size == MS.BACKING_PAGE_SIZE_4K
    slots, token = [], ""
    while True:
        page = stub.ListMemslots(MS.ListMemslotsRequest(parent=vm, page_size=3, page_token=token))
        slots += [s.slot for s in page.memslots]
        token = page.next_page_token
        if not token:
            break
    assert slots == [1, 2, 7, 10]
    other = create_vm(stub)
    token = stub.ListMemslots(MS.ListMemslotsRequest(parent=vm, page_size=1)).next_page_token
    wrong = fails(stub.ListMemslots, MS.ListMemslotsRequest(parent=other, page_token=token))
    assert wrong.field == "page_token"
    deleted = stub.DeleteMemslot(MS.DeleteMemslotRequest(name=f"{vm}/memslots/2"))
    assert deleted.outcome.change == MS.MEMSLOT_CHANGE_DELETE
    remaining = stub.ListMemslots(MS.ListMemslotsRequest(parent=vm)).memslots
    assert [s.slot for s in remaining] == [1, 7, 10]


def test_set_memory_attributes(stub):
    vm = create_vm(stub, vm_type=vm_pb2.VM_TYPE_SW_PROTECTED)
    add_slot(stub, vm, size=0x400000, guest_memfd=True, gmem_pfn_base=0x10000)
    stub.Fault(fault_pb2.FaultRequest(name=vm, gpa=0x1000, error_code=0x2))
    applied = stub.SetMemoryAttributes(
        MS.SetMemoryAttributesRequest(
            name=vm, gpa_range=common_pb2.GpaRange(address=0, size=0x200000), private=True
        )
    )
    assert applied.result == MS.MEMORY_ATTRIBUTES_RESULT_APPLIED and applied.spte_changes > 0
    again = stub.SetMemoryAttributes(
        MS.SetMemoryAttributesRequest(
            name=vm, gfn_range=common_pb2.GfnRange(start_gfn=0, end_gfn=0x200), private=True
        )
    )
    assert again.result == MS.MEMORY_ATTRIBUTES_RESULT_NOOP
    private = stub.Fault(fault_pb2.FaultRequest(name=vm, gpa=0x1000, error_code=0x2))
    assert private.private
    empty = fails(stub.SetMemoryAttributes, MS.SetMemoryAttributesRequest(name=vm))
    assert (empty.code, empty.field) == (Code.INVALID_ARGUMENT, "gfn_range")
    reversed_range = fails(
        stub.SetMemoryAttributes,
        MS.SetMemoryAttributesRequest(
            name=vm, gfn_range=common_pb2.GfnRange(start_gfn=5, end_gfn=5)
        ),
    )
    assert reversed_range.field == "gfn_range.end_gfn"
    unaligned = fails(
        stub.SetMemoryAttributes,
        MS.SetMemoryAttributesRequest(name=vm, gpa_range=common_pb2.GpaRange(address=1, size=1)),
    )
    assert unaligned.field == "gpa_range.address"
    default_vm = create_vm(stub)
    refused = fails(
        stub.SetMemoryAttributes,
        MS.SetMemoryAttributesRequest(
            name=default_vm, gfn_range=common_pb2.GfnRange(start_gfn=0, end_gfn=1), private=True
        ),
    )
    assert refused.code == Code.FAILED_PRECONDITION
