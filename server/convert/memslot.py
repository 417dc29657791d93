"""Memslot messages and requests: SetMemslot, DeleteMemslot, SetMemoryAttributes."""

from __future__ import annotations

from typing import Final

from kvmmu.v1 import common_pb2, memslot_pb2
from mmu.constants import KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY
from mmu.memslots import KVM_MEM_MAX_NR_PAGES, Memslot
from server import ops
from server.errors import FieldError
from server.names import memslot_name, parse_memslot_name, parse_vm_name

PAGE: Final = 4096
BACKING_LEVELS: Final = {
    memslot_pb2.BACKING_PAGE_SIZE_UNSPECIFIED: 1,
    memslot_pb2.BACKING_PAGE_SIZE_4K: 1,
    memslot_pb2.BACKING_PAGE_SIZE_2M: 2,
    memslot_pb2.BACKING_PAGE_SIZE_1G: 3,
}
BACKING_SIZES: Final = {
    1: memslot_pb2.BACKING_PAGE_SIZE_4K,
    2: memslot_pb2.BACKING_PAGE_SIZE_2M,
    3: memslot_pb2.BACKING_PAGE_SIZE_1G,
}
CHANGES: Final = {
    "none": memslot_pb2.MEMSLOT_CHANGE_UNSPECIFIED,
    "create": memslot_pb2.MEMSLOT_CHANGE_CREATE,
    "delete": memslot_pb2.MEMSLOT_CHANGE_DELETE,
    "move": memslot_pb2.MEMSLOT_CHANGE_MOVE,
    "flags_only": memslot_pb2.MEMSLOT_CHANGE_FLAGS_ONLY,
}
RESULTS: Final = {
    "ok": memslot_pb2.MEMSLOT_CHANGE_RESULT_APPLIED,
    "noop": memslot_pb2.MEMSLOT_CHANGE_RESULT_NOOP,
    "EINVAL": memslot_pb2.MEMSLOT_CHANGE_RESULT_MOVE_REVERTED,
}
ZAPS: Final = {
    "none": memslot_pb2.MEMSLOT_ZAP_NONE,
    "fast_zap_all": memslot_pb2.MEMSLOT_ZAP_FAST_ZAP_ALL,
    "slot_range": memslot_pb2.MEMSLOT_ZAP_SLOT_RANGE,
}


def memslot_from_proto(msg: memslot_pb2.Memslot) -> Memslot:
    if msg.guest_phys_addr % PAGE:
        raise FieldError("must be a multiple of 4096", field="memslot.guest_phys_addr")
    if msg.memory_size == 0:
        raise FieldError(
            "must be non-zero (DeleteMemslot deletes a slot)", field="memslot.memory_size"
        )
    if msg.memory_size % PAGE:
        raise FieldError("must be a multiple of 4096", field="memslot.memory_size")
    if msg.memory_size // PAGE > KVM_MEM_MAX_NR_PAGES:
        raise FieldError(
            f"at most {KVM_MEM_MAX_NR_PAGES * PAGE:#x} bytes ({KVM_MEM_MAX_NR_PAGES} pages, KVM: "
            "-EINVAL)",
            field="memslot.memory_size",
        )
    if msg.backing_page_size not in BACKING_LEVELS:
        raise FieldError(
            f"unknown backing page size {msg.backing_page_size}", field="memslot.backing_page_size"
        )
    if msg.guest_memfd and not msg.HasField("gmem_pfn_base"):
        raise FieldError("required with guest_memfd", field="memslot.gmem_pfn_base")
    if msg.HasField("gmem_pfn_base") and not msg.guest_memfd:
        raise FieldError("only a guest_memfd memslot has one", field="memslot.gmem_pfn_base")
    flags = (
        (KVM_MEM_LOG_DIRTY_PAGES if msg.log_dirty_pages else 0)
        | (KVM_MEM_READONLY if msg.readonly else 0)
        | (KVM_MEM_GUEST_MEMFD if msg.guest_memfd else 0)
    )
    return Memslot(
        id=msg.slot,
        base_gfn=msg.guest_phys_addr // PAGE,
        npages=msg.memory_size // PAGE,
        flags=flags,
        userspace_addr=msg.userspace_addr,
        host_pfn_base=msg.host_pfn_base,
        backing_level=BACKING_LEVELS[msg.backing_page_size],
        gmem_pfn_base=msg.gmem_pfn_base if msg.HasField("gmem_pfn_base") else None,
    )


def memslot_to_proto(vm_id: str, slot: Memslot) -> memslot_pb2.Memslot:
    msg = memslot_pb2.Memslot(
        name=memslot_name(vm_id, slot.id),
        slot=slot.id,
        guest_phys_addr=slot.base_gfn * PAGE,
        memory_size=slot.npages * PAGE,
        userspace_addr=slot.userspace_addr,
        log_dirty_pages=slot.log_dirty,
        readonly=slot.readonly,
        guest_memfd=slot.guest_memfd,
        host_pfn_base=slot.host_pfn_base,
        backing_page_size=BACKING_SIZES[slot.backing_level],
        base_gfn=slot.base_gfn,
        npages=slot.npages,
    )
    if slot.gmem_pfn_base is not None:
        msg.gmem_pfn_base = slot.gmem_pfn_base
    return msg


def outcome_to_proto(change: ops.MemslotChangeResult) -> memslot_pb2.MemslotChangeOutcome:
    result = change.result
    return memslot_pb2.MemslotChangeOutcome(
        change=CHANGES[change.change],
        result=RESULTS[result.result],
        generation=result.generation & ~(1 << 63),
        mmio_gen_wrap=result.mmio_gen_wrap,
        zap=ZAPS[result.zap],
        spte_changes=result.spte_changes,
    )


def set_memslot_op(request: memslot_pb2.SetMemslotRequest) -> ops.SetMemslot:
    vm_id = parse_vm_name(request.parent, "parent")
    if not request.HasField("memslot"):
        raise FieldError("required", field="memslot")
    return ops.SetMemslot(vm_id=vm_id, slot=memslot_from_proto(request.memslot))


def delete_memslot_op(request: memslot_pb2.DeleteMemslotRequest) -> ops.DeleteMemslot:
    vm_id, slot_id = parse_memslot_name(request.name)
    return ops.DeleteMemslot(vm_id=vm_id, slot_id=slot_id)


def gfn_range(msg: common_pb2.GfnRange, field: str) -> tuple[int, int]:
    if msg.end_gfn <= msg.start_gfn:
        raise FieldError("must be greater than start_gfn", field=f"{field}.end_gfn")
    return msg.start_gfn, msg.end_gfn


def gpa_range(msg: common_pb2.GpaRange, field: str) -> tuple[int, int]:
    if msg.address % PAGE:
        raise FieldError("must be a multiple of 4096", field=f"{field}.address")
    if msg.size == 0 or msg.size % PAGE:
        raise FieldError("must be a non-zero multiple of 4096", field=f"{field}.size")
    if msg.address + msg.size > 1 << 64:
        raise FieldError("the range ends beyond 2^64", field=f"{field}.size")
    return msg.address // PAGE, (msg.address + msg.size) // PAGE


def set_memory_attributes_op(
    request: memslot_pb2.SetMemoryAttributesRequest,
) -> ops.SetMemoryAttributes:
    vm_id = parse_vm_name(request.name)
    kind = request.WhichOneof("range")
    if kind == "gfn_range":
        start, end = gfn_range(request.gfn_range, "gfn_range")
    elif kind == "gpa_range":
        start, end = gpa_range(request.gpa_range, "gpa_range")
    else:
        raise FieldError("one of gfn_range or gpa_range is required", field="gfn_range")
    return ops.SetMemoryAttributes(vm_id, start_gfn=start, end_gfn=end, private=request.private)


def attributes_to_proto(result: ops.AttributesResult) -> memslot_pb2.SetMemoryAttributesResponse:
    return memslot_pb2.SetMemoryAttributesResponse(
        result=(
            memslot_pb2.MEMORY_ATTRIBUTES_RESULT_NOOP
            if result.noop
            else memslot_pb2.MEMORY_ATTRIBUTES_RESULT_APPLIED
        ),
        spte_changes=result.spte_changes,
    )
