"""Memslot changes as kvm_set_memory_region performs them (spec 4.3, 4.4, 8.8).

Each change validates first (a rejected change raises and changes nothing),
then runs KVM's steps in order: swaps that bump the generation (and may wrap
the MMIO generation into a fast zap), the shadow flush of a deleted or moved
slot, and the dirty-logging side effects of a flags change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mmu.attributes import PrivateRanges
from mmu.constants import (
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_PAGES_PER_HPAGE,
)
from mmu.errors import Conflict, InvalidInput, NotFound, Refused
from mmu.events import OpContext
from mmu.memslots import HUGE_LEVELS, KVM_MEM_MAX_NR_PAGES, VALID_FLAGS, Memslot, SlotState
from mmu.mmio import mmio_gen_wrap_zaps
from mmu.state import VmState
from mmu.tdp_mmu import unmap_gfn_range, zap_all_fast
from mmu.vmtypes import VmType


@dataclass(frozen=True, slots=True)
class MemslotResult:
    """What a memslot change did (the vectors' fields)."""

    result: str  # "ok", "noop", or "EINVAL" for a MOVE refused after it had zapped
    generation: int
    mmio_gen_wrap: bool
    zap: str  # "none", "fast_zap_all", "slot_range"
    spte_changes: int
    slot: Memslot | None = None


class _Change:
    """Bookkeeping of one kvm_set_memslot call."""

    def __init__(self, state: VmState, ctx: OpContext) -> None:
        self.state = state
        self.ctx = ctx
        self.wrapped = False
        self.zap = "none"
        self.start_changes = ctx.spte_changes

    def swap(self) -> None:
        """kvm_swap_active_memslots: bump the generation, maybe wrap the MMIO generation."""
        state = self.state
        state.memslots.generation = (state.memslots.generation & ~(1 << 63)) + state.nr_as_ids
        if mmio_gen_wrap_zaps(state.host, state.nr_as_ids, state.memslots.generation):
            self.wrapped = True
            zap_all_fast(state, self.ctx)

    def flush_shadow_memslot(self, slot: Memslot) -> None:
        """kvm_arch_flush_shadow_memslot for a slot being deleted or moved."""
        state = self.state
        if state.vm_type == VmType.DEFAULT and state.slot_zap_all_quirk:
            self.zap = "fast_zap_all"
            zap_all_fast(state, self.ctx)
        else:
            self.zap = "slot_range"
            unmap_gfn_range(state, self.ctx, slot.base_gfn, slot.end_gfn, shared=True, private=True)

    def result(self, result: str, slot: Memslot | None) -> MemslotResult:
        return MemslotResult(
            result,
            self.state.memslots.generation,
            self.wrapped,
            self.zap,
            self.ctx.spte_changes - self.start_changes,
            slot,
        )


def _einval(message: str, field: str | None = None) -> Refused:
    return Refused(message, field=field, errno="EINVAL")


def check_flags(state: VmState, flags: int) -> None:
    """check_memory_region_flags + kvm_arch_has_readonly_mem."""
    if flags & ~VALID_FLAGS:
        raise InvalidInput(f"unknown memslot flags {flags & ~VALID_FLAGS:#x}", field="flags")
    # Any VM type may back a slot with guest_memfd (CONFIG_KVM_GUEST_MEMFD, spec 4.3);
    # only VMs with private memory ever fault private pages from it.
    gmem = bool(flags & KVM_MEM_GUEST_MEMFD)
    if gmem and flags & KVM_MEM_LOG_DIRTY_PAGES:
        raise _einval("guest_memfd memslots cannot log dirty pages", "flags")
    if flags & KVM_MEM_READONLY and (gmem or state.vm_type.has_protected_state):
        raise _einval(
            "read-only memslots need a VM without protected state and without guest_memfd",
            "flags",
        )


def check_range(state: VmState, base_gfn: int, npages: int) -> None:
    """The kvm_arch_prepare_memory_region checks for CREATE and MOVE."""
    last = base_gfn + npages - 1
    if last > state.host.kvm_mmu_max_gfn:
        raise _einval(
            f"last GFN {last:#x} exceeds kvm_mmu_max_gfn() {state.host.kvm_mmu_max_gfn:#x}",
            "base_gfn",
        )
    if last & state.gfn_direct_bits:
        raise _einval(f"last GFN {last:#x} contains the TDX shared bit", "base_gfn")


def init_mixed(state: VmState, slot_state: SlotState) -> None:
    """kvm_mmu_init_memslot_memory_attributes: mark huge frames with mixed attributes."""
    slot = slot_state.slot
    for level in HUGE_LEVELS:
        slot_state.mixed[level] = set()
    if state.has_private_mem:
        update_mixed(state.attributes, slot_state, slot.base_gfn, slot.end_gfn)


def update_mixed(attrs: PrivateRanges, slot_state: SlotState, lo: int, hi: int) -> None:
    """Recompute the mixed flags of every huge frame of the slot that meets [lo, hi).

    Only frames that contain an attribute boundary can be mixed, so only those
    are examined.
    """
    slot = slot_state.slot
    lo, hi = max(lo, slot.base_gfn), min(hi, slot.end_gfn)
    if lo >= hi:
        return
    candidates = {lo, hi - 1}
    for start, end in attrs.intervals():
        if start < hi and end > lo:
            candidates.update(g for g in (start, end - 1, end) if lo <= g < hi)
    for level in HUGE_LEVELS:
        size = KVM_PAGES_PER_HPAGE(level)
        first, last = slot.frame(lo, level), slot.frame(hi - 1, level)
        mixed = slot_state.mixed[level]
        mixed.difference_update([f for f in mixed if first <= f <= last])
        for gfn in candidates:
            frame_start = gfn & -size
            if frame_start < slot.base_gfn or frame_start + size > slot.end_gfn:
                continue
            if not attrs.uniform(frame_start, frame_start + size):
                mixed.add(slot.frame(gfn, level))


def _bitmap(slot: Memslot) -> np.ndarray:
    return np.zeros((slot.npages + 63) // 64, dtype=np.uint64)


def create(state: VmState, ctx: OpContext, slot: Memslot) -> MemslotResult:
    check_flags(state, slot.flags)
    if slot.npages <= 0:
        raise _einval("a new memslot needs at least one page", "npages")
    if slot.npages > KVM_MEM_MAX_NR_PAGES:
        raise InvalidInput(
            f"{slot.npages} pages: KVM takes at most {KVM_MEM_MAX_NR_PAGES} per memslot",
            field="npages",
            errno="EINVAL",
        )
    if state.memslots.get(slot.id) is not None:
        raise _einval(f"memslot {slot.id} already exists", "slot")
    other = state.memslots.overlapping(slot.base_gfn, slot.npages)
    if other is not None:
        raise Conflict(
            f"GFNs [{slot.base_gfn:#x}, {slot.end_gfn:#x}) overlap memslot {other.slot.id} "
            f"[{other.slot.base_gfn:#x}, {other.slot.end_gfn:#x})",
            field="base_gfn",
            errno="EEXIST",
        )
    if slot.guest_memfd and slot.gmem_pfn_base is None:
        raise InvalidInput("a guest_memfd memslot needs gmem_pfn_base", field="gmem_pfn_base")
    check_range(state, slot.base_gfn, slot.npages)
    change = _Change(state, ctx)
    slot_state = SlotState(slot, _bitmap(slot) if slot.log_dirty else None)
    init_mixed(state, slot_state)
    state.memslots.install(slot_state)
    change.swap()
    return change.result("ok", slot)


def delete(state: VmState, ctx: OpContext, slot_id: int) -> MemslotResult:
    slot_state = _existing(state, slot_id)
    change = _Change(state, ctx)
    change.swap()  # publish the INVALID copy
    change.flush_shadow_memslot(slot_state.slot)
    state.memslots.remove(slot_id)
    change.swap()
    return change.result("ok", slot_state.slot)


def move(state: VmState, ctx: OpContext, slot_id: int, new_base_gfn: int) -> MemslotResult:
    slot_state = _existing(state, slot_id)
    old = slot_state.slot
    if old.guest_memfd:
        raise _einval("a guest_memfd memslot can only be deleted", "slot")
    if new_base_gfn == old.base_gfn:
        return _Change(state, ctx).result("noop", old)
    other = state.memslots.overlapping(new_base_gfn, old.npages, ignore=slot_id)
    if other is not None:
        raise Conflict(
            f"moved range overlaps memslot {other.slot.id}", field="base_gfn", errno="EEXIST"
        )
    change = _Change(state, ctx)
    change.swap()
    change.flush_shadow_memslot(old)
    try:
        check_range(state, new_base_gfn, old.npages)
    except Refused:
        change.swap()  # kvm_activate_memslot(invalid, old): the old slot comes back
        return change.result("EINVAL", old)
    moved = replace(old, base_gfn=new_base_gfn)
    state.memslots.remove(slot_id)
    new_state = SlotState(moved, slot_state.dirty_bitmap)
    init_mixed(state, new_state)
    state.memslots.install(new_state)
    change.swap()
    return change.result("ok", moved)


def set_dirty_logging(state: VmState, ctx: OpContext, slot_id: int, enable: bool) -> MemslotResult:
    """A FLAGS_ONLY change of KVM_MEM_LOG_DIRTY_PAGES, then kvm_mmu_slot_apply_flags."""
    from mmu import dirty_log  # noqa: PLC0415 - dirty_log builds on this module

    slot_state = _existing(state, slot_id)
    old = slot_state.slot
    if old.log_dirty == enable:
        return _Change(state, ctx).result("noop", old)
    flags = old.flags | KVM_MEM_LOG_DIRTY_PAGES if enable else old.flags & ~KVM_MEM_LOG_DIRTY_PAGES
    check_flags(state, flags)
    change = _Change(state, ctx)
    new = replace(old, flags=flags)
    slot_state.slot = new
    slot_state.dirty_bitmap = _bitmap(new) if enable else None
    state.memslots.install(slot_state)
    change.swap()
    dirty_log.apply_flags(state, ctx, slot_state, enable)
    return change.result("ok", new)


def _existing(state: VmState, slot_id: int) -> SlotState:
    slot_state = state.memslots.get(slot_id)
    if slot_state is None:
        raise NotFound(f"memslot {slot_id} does not exist", field="slot")
    return slot_state


def set_memory_attributes(
    state: VmState, ctx: OpContext, start: int, end: int, private: bool
) -> str:
    """KVM_SET_MEMORY_ATTRIBUTES (PRIVATE set or cleared) on [start, end).

    Returns "ok" or "noop". Mappings of the old kind are unmapped first
    (becoming private zaps SHARED mappings and vice versa), then the
    attribute is stored and the huge-page mixed flags are recomputed.
    """
    if private and not state.has_private_mem:
        raise _einval(f"{state.vm_type.kernel_name} has no private memory attribute", "private")
    if start >= end:
        raise InvalidInput("the range is empty", field="end_gfn")
    if state.attributes.all_have(start, end, private):
        return "noop"
    overlapping = state.memslots.slots_overlapping(start, end)
    for slot_state in overlapping:
        lo = max(start, slot_state.slot.base_gfn)
        hi = min(end, slot_state.slot.end_gfn)
        unmap_gfn_range(state, ctx, lo, hi, shared=private, private=not private)
    state.attributes.set(start, end, private)
    for slot_state in overlapping:
        update_mixed(state.attributes, slot_state, start, end)
    return "ok"
