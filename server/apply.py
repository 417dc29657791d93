"""The apply layer: the one function through which every state change goes.

`apply(registry, op)` takes an operation record (server.ops), applies it to
the registry under the right lock and returns the model's result. It is
deterministic given the registry's state and the op, and free of gRPC, so a
journal of ops replayed in commit order rebuilds the same state. The commit
order is the order in which ops take their VM's lock (create and delete of
a VM are also ordered by the registry lock). Read-only RPCs do not come here.

With a journal on the registry (durable state, server.durability), each op's
record is appended while its locks are still held, so the journal's order is
this apply order, and `apply` returns (the reply is sent) only once the
record is durable. The journal decides which failed ops it must record.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast

from mmu.errors import LimitExceeded, Refused
from mmu.fault_batch import BatchResult
from mmu.memslot_ops import MemslotResult
from mmu.memslots import Memslot
from mmu.vm import AgeResult, OpResult, Vm
from mmu.vmtypes import VmType
from server import ops
from server.config import Limits
from server.errors import ResourceNotFound
from server.names import MEMSLOT_TYPE, memslot_name
from server.registry import Journal, Registry, VmEntry, vm_info

R = TypeVar("R")

# SetMemslot: fields KVM (or the model's host stubs) never lets an existing slot change.
_IMMUTABLE: tuple[tuple[str, str, str | None], ...] = (
    ("npages", "a memslot cannot be resized (KVM: -EINVAL); delete and re-create it", "EINVAL"),
    ("userspace_addr", "userspace_addr of an existing memslot cannot change", "EINVAL"),
    ("readonly", "KVM_MEM_READONLY of an existing memslot cannot change", "EINVAL"),
    ("guest_memfd", "KVM_MEM_GUEST_MEMFD of an existing memslot cannot change", "EINVAL"),
    ("host_pfn_base", "host_pfn_base of an existing memslot cannot change", None),
    ("backing_level", "the backing page size of an existing memslot cannot change", None),
    ("gmem_pfn_base", "gmem_pfn_base of an existing memslot cannot change", None),
)


class _Recorder:
    """Journals one op from inside its locks: a context manager around the change."""

    def __init__(self, journal: Journal | None, op: ops.Op[Any]) -> None:
        self.journal = journal
        self.op = op
        self.seq: int | None = None

    def done(self) -> None:
        if self.journal is not None:
            self.seq = self.journal.append(self.op)

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.done()
        elif self.journal is not None and isinstance(exc, Exception):
            self.seq = self.journal.append(self.op, exc)

    def wait(self) -> None:
        if self.journal is not None and self.seq is not None:
            self.journal.wait(self.seq)


def apply(registry: Registry, op: ops.Op[R]) -> R:
    """Apply one operation record and return the model's result (once it is durable)."""
    journal = registry.journal
    record = _Recorder(journal, op)
    if journal is None:
        return _apply(registry, op, record)
    try:
        with journal.guard(op):
            return _apply(registry, op, record)
    finally:
        record.wait()


def _apply(registry: Registry, op: ops.Op[R], record: _Recorder) -> R:
    if isinstance(op, ops.CreateVm):
        return cast(R, _create_vm(registry, op, record))
    if isinstance(op, ops.DeleteVm):
        registry.remove(op.vm_id, then=record.done)
        return cast(R, None)
    handler = _VM_HANDLERS[type(op)]
    with registry.locked(op.vm_id) as entry, record:
        return cast(R, handler(entry, registry.limits, op))


def _create_vm(registry: Registry, op: ops.CreateVm, record: _Recorder) -> ops.VmInfo:
    def make() -> VmEntry:
        vm = Vm(
            registry.host,
            VmType(op.vm_type),
            vm_id=op.vm_id,
            name=op.display_name,
            guest_maxphyaddr=op.guest_maxphyaddr,
            mt_bits=op.mt_bits,
            slot_zap_all_quirk=op.slot_zap_all_quirk,
            initial_generation=op.initial_generation,
            tracing=op.tracing,
            max_tables=registry.limits.max_tables_per_vm,
        )
        entry = VmEntry(vm, op.create_time_ns, op.initial_generation)
        record.done()  # under the registry lock, before the VM is visible
        return entry

    entry = registry.insert(op.vm_id, make)
    with entry.lock:
        return vm_info(entry)


def _update_vm(entry: VmEntry, _limits: Limits, op: ops.UpdateVm) -> ops.VmInfo:
    if op.display_name is not None:
        entry.vm.name = op.display_name
    if op.tracing is not None:
        entry.vm.tracing = op.tracing
    return vm_info(entry)


def _set_mmio_value(entry: VmEntry, _limits: Limits, op: ops.SetMmioValue) -> ops.MmioValueResult:
    result = entry.vm.set_mmio_value(op.value, existing="zap" if op.zap_existing else "refuse")
    return ops.MmioValueResult(vm_info(entry), result.spte_changes)


def _find_slot(vm: Vm, slot_id: int) -> Memslot | None:
    return next((s for s in vm.memslots() if s.id == slot_id), None)


def _existing_slot(entry: VmEntry, slot_id: int, field: str = "name") -> Memslot:
    slot = _find_slot(entry.vm, slot_id)
    if slot is None:
        name = memslot_name(entry.vm.id, slot_id)
        raise ResourceNotFound(MEMSLOT_TYPE, name, field=field)
    return slot


def _slot_attr(slot: Memslot, name: str) -> object:
    return getattr(slot, name)


def _set_memslot(entry: VmEntry, limits: Limits, op: ops.SetMemslot) -> ops.MemslotChangeResult:
    """KVM_SET_USER_MEMORY_REGION2 with a non-zero size: CREATE, MOVE or FLAGS_ONLY."""
    vm, new = entry.vm, op.slot
    old = _find_slot(vm, new.id)
    if old is None:
        if len(vm.memslots()) >= limits.max_memslots_per_vm:
            raise LimitExceeded(
                f"the VM already has {limits.max_memslots_per_vm} memslots",
                limit="max_memslots_per_vm",
                field="memslot.slot",
            )
        return ops.MemslotChangeResult("create", vm.create_memslot(new))
    for name, message, errno in _IMMUTABLE:
        if _slot_attr(old, name) != _slot_attr(new, name):
            raise Refused(message, field=name, errno=errno)
    if new.base_gfn != old.base_gfn:
        if new.log_dirty != old.log_dirty:
            raise Refused(
                "change guest_phys_addr (MOVE) and log_dirty_pages (FLAGS_ONLY) in separate calls",
                field="log_dirty_pages",
            )
        return ops.MemslotChangeResult("move", vm.move_memslot(new.id, new.base_gfn))
    if new.log_dirty != old.log_dirty:
        return ops.MemslotChangeResult("flags_only", vm.set_dirty_logging(new.id, new.log_dirty))
    noop = MemslotResult("noop", vm.generation, False, "none", 0, old)
    return ops.MemslotChangeResult("none", noop)


def _delete_memslot(
    entry: VmEntry, _limits: Limits, op: ops.DeleteMemslot
) -> ops.MemslotChangeResult:
    _existing_slot(entry, op.slot_id)
    return ops.MemslotChangeResult("delete", entry.vm.delete_memslot(op.slot_id))


def _set_memory_attributes(
    entry: VmEntry, _limits: Limits, op: ops.SetMemoryAttributes
) -> ops.AttributesResult:
    result = entry.vm.set_memory_attributes(op.start_gfn, op.end_gfn, op.private)
    return ops.AttributesResult(result.result == "noop", result.spte_changes)


def _fault(entry: VmEntry, _limits: Limits, op: ops.Fault) -> ops.FaultReply:
    vm = entry.vm
    result = vm.fault(op.gpa, op.error_code, explain=op.explain, events=True)
    first = vm.next_event_seq - len(result.events) if vm.tracing and result.events else 0
    return ops.FaultReply(result, first)


def _batch_fault(entry: VmEntry, _limits: Limits, op: ops.BatchFault) -> BatchResult:
    if op.error_codes is None:
        return entry.vm.fault_batch(op.gpas, op.shared_error_code)
    return entry.vm.fault_batch(op.gpas, op.error_codes)


def _zap(entry: VmEntry, _limits: Limits, op: ops.Zap) -> OpResult:
    vm = entry.vm
    if op.kind == "range":
        return vm.zap_gfn_range(op.start_gfn, op.end_gfn)
    if op.kind == "slot":
        _existing_slot(entry, op.slot_id, field="slot")
        return vm.zap_memslot(op.slot_id)
    return vm.zap_all_fast()


def _get_dirty_log(entry: VmEntry, _limits: Limits, op: ops.GetDirtyLog) -> ops.DirtyLogResult:
    slot = _existing_slot(entry, op.slot_id)
    if not slot.log_dirty:
        raise Refused(
            f"memslot {slot.id} does not log dirty pages (set log_dirty_pages first)",
            field="name",
            errno="ENOENT",
        )
    return ops.DirtyLogResult(slot, entry.vm.get_dirty_log(op.slot_id))


def _age(entry: VmEntry, _limits: Limits, op: ops.Age) -> AgeResult:
    return entry.vm.age(op.start_gfn, op.end_gfn, test_only=op.test_only)


_VM_HANDLERS: dict[type[ops.Op[Any]], Callable[[VmEntry, Limits, Any], object]] = {
    ops.UpdateVm: _update_vm,
    ops.SetMmioValue: _set_mmio_value,
    ops.SetMemslot: _set_memslot,
    ops.DeleteMemslot: _delete_memslot,
    ops.SetMemoryAttributes: _set_memory_attributes,
    ops.Fault: _fault,
    ops.BatchFault: _batch_fault,
    ops.Zap: _zap,
    ops.GetDirtyLog: _get_dirty_log,
    ops.Age: _age,
}
