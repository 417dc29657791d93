"""ZapSptes, GetDirtyLog and AgeSptes: requests to ops, results to responses."""

from __future__ import annotations

from kvmmu.v1 import spte_pb2
from mmu.vm import MAX_MEMSLOT_ID, AgeResult, OpResult
from server import ops
from server.convert.memslot import gfn_range
from server.errors import FieldError
from server.names import parse_memslot_name, parse_vm_name


def zap_op(request: spte_pb2.ZapSptesRequest) -> ops.Zap:
    vm_id = parse_vm_name(request.name)
    target = request.WhichOneof("target")
    if target == "gfn_range":
        start, end = gfn_range(request.gfn_range, "gfn_range")
        return ops.Zap(vm_id, kind="range", start_gfn=start, end_gfn=end)
    if target == "all":
        if not request.all:
            raise FieldError("must be true to zap every direct root", field="all")
        return ops.Zap(vm_id, kind="all")
    if target == "slot":
        if request.slot > MAX_MEMSLOT_ID:
            raise FieldError(f"must be 0..{MAX_MEMSLOT_ID}", field="slot")
        return ops.Zap(vm_id, kind="slot", slot_id=request.slot)
    raise FieldError("one of gfn_range, all or slot is required", field="gfn_range")


def zap_response(result: OpResult) -> spte_pb2.ZapSptesResponse:
    return spte_pb2.ZapSptesResponse(spte_changes=result.spte_changes)


def dirty_log_op(request: spte_pb2.GetDirtyLogRequest) -> ops.GetDirtyLog:
    vm_id, slot_id = parse_memslot_name(request.name)
    return ops.GetDirtyLog(vm_id, slot_id=slot_id)


def dirty_log_response(result: ops.DirtyLogResult) -> spte_pb2.GetDirtyLogResponse:
    log = result.log
    return spte_pb2.GetDirtyLogResponse(
        base_gfn=result.slot.base_gfn,
        npages=result.slot.npages,
        bitmap=log.bitmap,
        dirty_page_offsets=log.dirty,
        dirty_count=len(log.dirty),
        spte_changes=log.spte_changes,
    )


def age_op(request: spte_pb2.AgeSptesRequest) -> ops.Age:
    vm_id = parse_vm_name(request.name)
    if not request.HasField("gfn_range"):
        raise FieldError("required", field="gfn_range")
    start, end = gfn_range(request.gfn_range, "gfn_range")
    return ops.Age(vm_id, start_gfn=start, end_gfn=end, test_only=request.test_only)


def age_response(result: AgeResult) -> spte_pb2.AgeSptesResponse:
    return spte_pb2.AgeSptesResponse(young=result.young, spte_changes=result.spte_changes)
