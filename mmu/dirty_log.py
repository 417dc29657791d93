"""Dirty logging and huge-page recovery (spec 8.9; mmu.c / tdp_mmu.c).

Enabling logging splits huge pages (eager_page_split) and write-protects or
clears D bits; harvesting returns the bitmap and re-protects the harvested
pages; disabling logging collapses tables back into huge pages.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmu.constants import (
    KVM_MAX_HUGEPAGE_LEVEL,
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    PT_PAGE_SIZE_MASK,
    PT_WRITABLE_MASK,
    SPTE_MMU_PRESENT_MASK,
)
from mmu.errors import NotFound
from mmu.events import OpContext
from mmu.memslots import SlotState
from mmu.spte import make_huge_spte
from mmu.state import VmState
from mmu.tdp_iter import TdpIter
from mmu.tdp_mmu import alloc_table, set_spte, split_huge_page, write_spte_direct, wrprot_gfn_range


def _present_leaf(spte: int, level: int) -> bool:
    return bool(spte & SPTE_MMU_PRESENT_MASK) and (
        level == PG_LEVEL_4K or bool(spte & PT_PAGE_SIZE_MASK)
    )


def try_split_huge_pages(state: VmState, ctx: OpContext, start: int, end: int) -> None:
    """kvm_mmu_slot_try_split_huge_pages(slot, 4K): 1G -> 2M -> 4K, pre-order."""
    for tree, root in state.roots():
        it = TdpIter(state, tree, root, PG_LEVEL_2M, start, end, ctx.warnings)
        while it.valid and it.gfn < end:
            spte = it.old_spte
            if spte & SPTE_MMU_PRESENT_MASK and spte & PT_PAGE_SIZE_MASK:
                child = alloc_table(state, ctx, it.level - 1, it.gfn, tree)
                split_huge_page(state, ctx, it, child, shared=True)
            it.next()


def clear_dirty_slot(state: VmState, ctx: OpContext, start: int, end: int) -> None:
    """kvm_tdp_mmu_clear_dirty_slot: D (W without A/D) off every leaf of the slot."""
    dbit = PT_WRITABLE_MASK if not state.host.kvm_ad_enabled else state.host.shadow_dirty_mask
    for tree, root in state.roots():
        it = TdpIter(state, tree, root, PG_LEVEL_4K, start, end, ctx.warnings)
        while it.valid and it.gfn < end:
            spte = it.old_spte
            if _present_leaf(spte, it.level) and spte & dbit:
                set_spte(state, ctx, it, spte & ~dbit, shared=True)
            it.next()


def apply_flags(state: VmState, ctx: OpContext, slot_state: SlotState, enabled: bool) -> None:
    """kvm_mmu_slot_apply_flags for a FLAGS_ONLY change of LOG_DIRTY_PAGES."""
    slot = slot_state.slot
    if slot.readonly:
        return
    start, end = slot.base_gfn, slot.end_gfn
    if not enabled:
        recover_huge_pages(state, ctx, slot_state)
        return
    if state.host.config.eager_page_split:
        try_split_huge_pages(state, ctx, start, end)
    if state.host.config.pml:
        clear_dirty_slot(state, ctx, start, end)
        wrprot_gfn_range(state, ctx, start, end, PG_LEVEL_2M)
    else:
        wrprot_gfn_range(state, ctx, start, end, PG_LEVEL_4K)


def recovery_max_level(state: VmState, slot_state: SlotState, gfn: int, ctx: OpContext) -> int:
    """kvm_mmu_max_mapping_level(kvm, NULL, slot, gfn)."""
    level = slot_state.max_lpage_level(gfn, min(5, state.host.max_huge_page_level))
    if level == PG_LEVEL_4K:
        return PG_LEVEL_4K
    if state.mem_is_private(gfn):
        ctx.warnings.append("gmem_max_mapping_level_without_fault")
        return PG_LEVEL_4K
    return min(slot_state.slot.backing_level, level)


def recover_huge_pages(state: VmState, ctx: OpContext, slot_state: SlotState) -> None:
    """recover_huge_pages_range: replace tables that could be huge pages again."""
    slot = slot_state.slot
    start, end = slot.base_gfn, slot.end_gfn
    for tree, root in state.roots():
        it = TdpIter(state, tree, root, PG_LEVEL_4K, start, end, ctx.warnings)
        while it.valid and it.gfn < end:
            spte, level = it.old_spte, it.level
            if (
                level <= KVM_MAX_HUGEPAGE_LEVEL
                and spte & SPTE_MMU_PRESENT_MASK
                and not _present_leaf(spte, level)
                and start <= it.gfn < end
                and recovery_max_level(state, slot_state, it.gfn, ctx) >= level
            ):
                leaf = _first_leaf_below(state, tree, it, ctx.warnings)
                if leaf is not None:
                    huge = make_huge_spte(state.host, leaf, level, ctx.warnings)
                    set_spte(state, ctx, it, huge, shared=True)
            it.next()


def _first_leaf_below(
    state: VmState, tree: int, parent: TdpIter, warnings: list[str]
) -> int | None:
    """tdp_mmu_make_huge_spte's search: the first present leaf under `parent` (pre-order)."""
    child = state.child_slot(parent.old_spte)
    start = parent.gfn
    end = start + (1 << (9 * (parent.level - 1)))
    it = TdpIter(state, tree, child, PG_LEVEL_4K, start, end, warnings, root_level=parent.level - 1)
    while it.valid and it.gfn < end:
        if _present_leaf(it.old_spte, it.level):
            return it.old_spte
        it.next()
    return None


@dataclass(frozen=True, slots=True)
class DirtyLog:
    """KVM_GET_DIRTY_LOG: bit i of the bitmap is page base_gfn + i."""

    bitmap: list[int]
    dirty: list[int]
    spte_changes: int


def get_dirty_log(state: VmState, ctx: OpContext, slot_id: int) -> DirtyLog:
    """kvm_get_dirty_log_protect without manual protect: harvest, clear, re-protect."""
    slot_state = state.memslots.get(slot_id)
    if slot_state is None:
        raise NotFound(f"memslot {slot_id} does not exist", field="slot", errno="ENOENT")
    if slot_state.dirty_bitmap is None:
        raise NotFound(f"memslot {slot_id} does not log dirty pages", field="slot", errno="ENOENT")
    before = ctx.spte_changes
    bitmap = [int(w) for w in slot_state.dirty_bitmap]
    dirty: list[int] = []
    wrprot = not state.host.config.pml
    words = slot_state.dirty_bitmap
    for index, word in enumerate(bitmap):
        if not word:
            continue
        words[index] = 0
        offset = index * 64
        dirty.extend(offset + bit for bit in range(64) if word >> bit & 1)
        clear_dirty_pt_masked(state, ctx, slot_state.slot.base_gfn + offset, word, wrprot)
    return DirtyLog(bitmap, dirty, ctx.spte_changes - before)


def clear_dirty_pt_masked(
    state: VmState, ctx: OpContext, base: int, mask: int, wrprot: bool
) -> None:
    host = state.host
    dbit = PT_WRITABLE_MASK if wrprot or not host.kvm_ad_enabled else host.shadow_dirty_mask
    first = (mask & -mask).bit_length() - 1
    for tree, root in state.roots():
        remaining = mask
        end = base + 64
        it = TdpIter(state, tree, root, PG_LEVEL_4K, base + first, end, ctx.warnings)
        while it.valid and it.gfn < end and remaining:
            spte, level = it.old_spte, it.level
            if _present_leaf(spte, level) and level == PG_LEVEL_4K:
                bit = 1 << (it.gfn - base)
                if remaining & bit:
                    remaining &= ~bit
                    if spte & dbit:
                        write_spte_direct(state, ctx, it, spte & ~dbit)
            it.next()
