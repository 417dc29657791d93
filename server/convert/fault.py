"""Fault and BatchFault: requests to ops, model results to responses."""

from __future__ import annotations

from typing import Final

import numpy as np

from kvmmu.v1 import common_pb2, fault_pb2
from mmu.constants import (
    PFERR_FETCH_MASK,
    PFERR_PRESENT_MASK,
    PFERR_PRIVATE_ACCESS,
    PFERR_RSVD_MASK,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
)
from mmu.errors import LimitExceeded
from mmu.fault import Outcome
from mmu.fault_batch import BatchResult
from mmu.host import Host
from server import ops
from server.config import Limits
from server.convert.events import event_to_proto, outcome_code, warning_event
from server.convert.packed import fill
from server.errors import FieldError
from server.names import parse_vm_name

FLAG_BITS: Final = (
    ("present", PFERR_PRESENT_MASK),
    ("write", PFERR_WRITE_MASK),
    ("user", PFERR_USER_MASK),
    ("rsvd", PFERR_RSVD_MASK),
    ("fetch", PFERR_FETCH_MASK),
    ("private", PFERR_PRIVATE_ACCESS),
)
ROOTS: Final = {"direct": common_pb2.TDP_ROOT_DIRECT, "mirror": common_pb2.TDP_ROOT_MIRROR}


def error_code(request: fault_pb2.FaultRequest) -> int:
    kind = request.WhichOneof("error_code_kind")
    if kind == "error_code":
        return request.error_code
    if kind == "flags":
        flags = request.flags
        return sum(bit for name, bit in FLAG_BITS if getattr(flags, name))
    return 0


def fault_op(request: fault_pb2.FaultRequest) -> ops.Fault:
    return ops.Fault(
        vm_id=parse_vm_name(request.name),
        gpa=request.gpa,
        error_code=error_code(request),
        explain=request.explain,
    )


def fault_response(host: Host, reply: ops.FaultReply) -> fault_pb2.FaultResponse:
    res = reply.result
    if res.outcome == Outcome.ENOMEM:
        raise LimitExceeded(
            "the VM is at its page-table limit (max_tables_per_vm as it was when the VM was "
            "created): a fault first needs one free table per paging level (KVM's "
            "mmu_topup_memory_caches), so -ENOMEM; nothing was mapped, only pf_taken counted it",
            limit="max_tables_per_vm",
            field="gpa",
        )
    msg = fault_pb2.FaultResponse(
        outcome=outcome_code(res.outcome),
        gfn=res.gfn,
        private=res.private,
        mmio_cache_hit=res.mmio_cache_hit,
        dirty_marked=res.dirty_marked,
    )
    if res.level is not None:
        msg.level = res.level
    if res.spte is not None:
        msg.spte = res.spte
    if res.mmio_check is not None:
        msg.mmio_check = outcome_code(res.mmio_check)
    if res.fast is not None:
        msg.fast_path = outcome_code(res.fast)
    if res.root is not None:
        msg.root = ROOTS[res.root]
    if res.req_level is not None:
        msg.req_level = res.req_level
    if res.goal_level is not None:
        msg.goal_level = res.goal_level
    if res.memory_fault is not None:
        mf = res.memory_fault
        msg.memory_fault.CopyFrom(fault_pb2.MemoryFault(gpa=mf.gpa, size=mf.size, flags=mf.flags))
    seq = reply.first_sequence
    msg.events.extend(
        event_to_proto(host, seq + i if seq else 0, event) for i, event in enumerate(res.events)
    )
    msg.events.extend(warning_event(name) for name in res.warnings)
    if res.explain is not None:
        msg.explanation.extend(
            fault_pb2.ExplanationStep(function=step.function, text=step.text)
            for step in res.explain
        )
    return msg


def batch_fault_op(request: fault_pb2.BatchFaultRequest, limits: Limits) -> ops.BatchFault:
    vm_id = parse_vm_name(request.name)
    count = len(request.gpas)
    if count > limits.max_batch_size:
        raise LimitExceeded(
            f"{count} faults in one batch; the server takes at most {limits.max_batch_size}",
            limit="max_batch_size",
            field="gpas",
        )
    codes = None
    if len(request.error_codes):
        if len(request.error_codes) != count:
            raise FieldError(
                f"{len(request.error_codes)} error codes for {count} GPAs: give one per GPA "
                "or none (shared_error_code)",
                field="error_codes",
            )
        codes = np.array(request.error_codes, dtype=np.uint64)
    return ops.BatchFault(
        vm_id=vm_id,
        gpas=np.array(request.gpas, dtype=np.uint64),
        error_codes=codes,
        shared_error_code=request.shared_error_code,
    )


def batch_response(result: BatchResult) -> fault_pb2.BatchFaultResponse:
    msg = fault_pb2.BatchFaultResponse()
    fill(
        msg,
        small={"outcomes": result.outcomes, "levels": result.levels},
        wide={"sptes": result.sptes, "gfns": result.gfns},
    )
    return msg
