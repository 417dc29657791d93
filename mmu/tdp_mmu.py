"""The TDP MMU's SPTE bookkeeping and tree operations (tdp_mmu.c; spec 8.1, 8.7, 8.8, 8.10).

Every write that KVM routes through handle_changed_spte() goes through
`set_spte` here, so statistics, table teardown and the
kvm_tdp_mmu_spte_changed events stay in step with KVM.
"""

from __future__ import annotations

import numpy as np

from mmu.constants import (
    KVM_PAGES_PER_HPAGE,
    PG_LEVEL_4K,
    PT_PAGE_SIZE_MASK,
    PT_WRITABLE_MASK,
    SHADOW_NONPRESENT_VALUE,
    SPTE_ENT_PER_PAGE,
    SPTE_MMU_PRESENT_MASK,
)
from mmu.errors import Refused
from mmu.events import OpContext
from mmu.pool import TREE_DIRECT, TREE_MIRROR
from mmu.spte import check_spte_writable_invariants, make_nonleaf_spte, make_small_spte
from mmu.state import VmState
from mmu.tdp_iter import Entry, TdpIter


class KvmBug(Refused):
    """A transition KVM would BUG() on; the model refuses it."""


def _is_leaf(spte: int, level: int) -> bool:
    return bool(spte & SPTE_MMU_PRESENT_MASK) and (
        level == PG_LEVEL_4K or bool(spte & PT_PAGE_SIZE_MASK)
    )


# --- roots and tables -------------------------------------------------------


def alloc_table(
    state: VmState, ctx: OpContext, level: int, gfn: int, tree: int, nx_disallowed: bool = False
) -> int:
    """tdp_mmu_alloc_sp + tdp_mmu_init_sp (emits kvm_mmu_get_page)."""
    slot = state.pool.alloc(level, gfn, tree, nx_disallowed)
    ctx.emit("kvm_mmu_get_page", gfn, level, tree == TREE_MIRROR, state.root_access)
    return slot


def ensure_roots(state: VmState, ctx: OpContext) -> None:
    """mmu_alloc_direct_roots at vCPU entry: the TD's mirror root first, then the direct root."""
    if state.is_tdx and state.mirror_root is None:
        state.mirror_root = alloc_table(state, ctx, state.root_level, 0, TREE_MIRROR)
    if state.direct_root is None:
        state.direct_root = alloc_table(state, ctx, state.root_level, 0, TREE_DIRECT)


def untrack_nx(state: VmState, slot: int) -> None:
    pool = state.pool
    if pool.nx_listed[slot]:
        pool.nx_listed[slot] = False
        state.stats.nx_lpage_splits -= 1
    pool.nx_disallowed[slot] = False


def track_possible_nx_huge_page(state: VmState, slot: int) -> None:
    pool = state.pool
    if not pool.nx_listed[slot]:
        pool.nx_listed[slot] = True
        state.stats.nx_lpage_splits += 1


# --- the central bookkeeping -------------------------------------------------


def handle_changed_spte(
    state: VmState, ctx: OpContext, gfn: int, old: int, new: int, level: int, shared: bool
) -> None:
    was_present = bool(old & SPTE_MMU_PRESENT_MASK)
    is_present = bool(new & SPTE_MMU_PRESENT_MASK)
    was_leaf = was_present and (level == PG_LEVEL_4K or bool(old & PT_PAGE_SIZE_MASK))
    is_leaf = is_present and (level == PG_LEVEL_4K or bool(new & PT_PAGE_SIZE_MASK))
    base = state.host.spte_base_addr_mask
    pfn_changed = (old & base) != (new & base)
    if was_leaf and is_leaf and pfn_changed:
        raise KvmBug(f"present leaf {old:#x} replaced by a leaf with another PFN {new:#x}")
    if old == new:
        return
    ctx.spte_changes += 1
    if ctx.events is not None:
        ctx.events.append(("kvm_tdp_mmu_spte_changed", 0, gfn, level, old, new))
    if is_leaf:
        check_spte_writable_invariants(state.host, new, ctx.warnings)
    if not was_present and not is_present:
        return
    if is_leaf != was_leaf:
        state.stats.add_pages(level, 1 if is_leaf else -1)
    if was_present and not was_leaf and (is_leaf or not is_present or pfn_changed):
        handle_removed_pt(state, ctx, state.child_slot(old), shared)


def handle_removed_pt(state: VmState, ctx: OpContext, slot: int, shared: bool) -> None:
    """Tear down a table unlinked from its parent, freezing every entry."""
    pool = state.pool
    level = int(pool.level[slot])
    base_gfn = int(pool.gfn[slot])
    ctx.emit(
        "kvm_mmu_prepare_zap_page",
        base_gfn,
        level,
        int(pool.tree[slot]) == TREE_MIRROR,
        state.root_access,
    )
    untrack_nx(state, slot)
    frozen = state.host.layout.frozen_spte
    step = KVM_PAGES_PER_HPAGE(level)
    row = pool.entries[slot]
    for i in range(SPTE_ENT_PER_PAGE):
        old = int(row[i])
        if not shared and not old & SPTE_MMU_PRESENT_MASK:
            continue
        row[i] = frozen
        handle_changed_spte(state, ctx, base_gfn + i * step, old, frozen, level, shared)
    pool.release(slot)


def set_spte(state: VmState, ctx: OpContext, it: Entry, new: int, shared: bool) -> None:
    """tdp_mmu_set_spte_atomic / tdp_mmu_iter_set_spte at the iterator's entry."""
    old = it.old_spte
    state.pool.flat[(it.slot << 9) | it.index] = new
    it.old_spte = new
    handle_changed_spte(state, ctx, it.gfn, old, new, it.level, shared)


def write_spte_direct(state: VmState, ctx: OpContext, it: Entry, new: int) -> None:
    """A write KVM makes without handle_changed_spte (fast path, dirty clear, aging)."""
    old = it.old_spte
    state.pool.flat[(it.slot << 9) | it.index] = new
    it.old_spte = new
    if old != new:
        ctx.spte_changes += 1
        ctx.emit("kvm_tdp_mmu_spte_changed", 0, it.gfn, it.level, old, new)


# --- link and split ---------------------------------------------------------


def link_sp(state: VmState, ctx: OpContext, it: Entry, child: int, shared: bool = True) -> None:
    spte = make_nonleaf_spte(state.host, state.pool.pa(child), not state.host.kvm_ad_enabled)
    set_spte(state, ctx, it, spte, shared)


def split_huge_page(state: VmState, ctx: OpContext, it: Entry, child: int, shared: bool) -> None:
    """tdp_mmu_split_huge_page: fill the child from the huge SPTE, link it, account 512 pages."""
    huge = it.old_spte
    level = it.level
    row = state.pool.entries[child]
    for i in range(SPTE_ENT_PER_PAGE):
        row[i] = make_small_spte(state.host, huge, level - 1, state.root_access, i, ctx.warnings)
    link_sp(state, ctx, it, child, shared)
    state.stats.add_pages(level - 1, SPTE_ENT_PER_PAGE)
    ctx.emit("kvm_mmu_split_huge_page", it.gfn, huge, level, 0)


# --- zapping ----------------------------------------------------------------


def zap_leafs(state: VmState, ctx: OpContext, tree: int, start: int, end: int) -> None:
    """tdp_mmu_zap_leafs (mmu_lock held for write): leaves only, tables stay."""
    root = state.root_slot(tree)
    if root is None:
        return
    end = min(end, state.host.kvm_mmu_max_gfn + 1)
    it = TdpIter(state, tree, root, PG_LEVEL_4K, start, end, ctx.warnings)
    while it.valid and it.gfn < end:
        if _is_leaf(it.old_spte, it.level):
            set_spte(state, ctx, it, SHADOW_NONPRESENT_VALUE, shared=False)
        it.next()


def zap_gfn_range(state: VmState, ctx: OpContext, start: int, end: int) -> None:
    """kvm_zap_gfn_range: a leaf zap of every valid root (direct and mirror)."""
    for tree, _ in state.roots():
        zap_leafs(state, ctx, tree, start, end)


def unmap_gfn_range(
    state: VmState, ctx: OpContext, start: int, end: int, *, shared: bool, private: bool
) -> None:
    """kvm_unmap_gfn_range with an attribute filter: TDs pick roots by it, others use direct."""
    for tree, _ in state.roots():
        if state.is_tdx and not (
            (tree == TREE_DIRECT and shared) or (tree == TREE_MIRROR and private)
        ):
            continue
        zap_leafs(state, ctx, tree, start, end)


def _zap_root_pass(state: VmState, ctx: OpContext, tree: int, root: int, zap_level: int) -> None:
    end = state.host.kvm_mmu_max_gfn + 1
    it = TdpIter(state, tree, root, zap_level, 0, end, ctx.warnings, gfn_bits=0)
    while it.valid and it.gfn < end:
        if it.old_spte & SPTE_MMU_PRESENT_MASK and it.level <= zap_level:
            set_spte(state, ctx, it, SHADOW_NONPRESENT_VALUE, shared=True)
        it.next()


def zap_root(state: VmState, ctx: OpContext, tree: int) -> None:
    """tdp_mmu_zap_root(shared=true) in its four passes, then free the root."""
    root = state.root_slot(tree)
    if root is None:
        return
    if ctx.events is None:  # same outcome, no per-entry events needed
        _zap_root_counted(state, ctx, tree, root)
    else:
        for zap_level in (1, 2, 3, state.root_level):
            _zap_root_pass(state, ctx, tree, root, zap_level)
        state.pool.release(root)
    if tree == TREE_DIRECT:
        state.direct_root = None
    else:
        state.mirror_root = None


def _zap_root_counted(state: VmState, ctx: OpContext, tree: int, root: int) -> None:
    """The same outcome as the four passes, computed over the whole tree at once.

    Every present leaf is zapped once (one change) and every non-root table is
    removed under the shared lock, freezing all 512 entries (512 changes). A
    table's parent entry is zapped by a pass of its own (one more change) when
    it sits at level 2, 3 or the root level; a level-4 entry under a 5-level
    root is never visited by a pass, it is frozen with its table instead.
    """
    pool = state.pool
    slots = pool.live_slots(tree)
    others = slots[slots != root]
    rows = pool.entries[slots]
    levels = pool.level[slots].astype(np.int64)
    present = (rows & np.uint64(SPTE_MMU_PRESENT_MASK)) != 0
    large = (rows & np.uint64(PT_PAGE_SIZE_MASK)) != 0
    leaf = present & ((levels[:, None] == PG_LEVEL_4K) | large)
    for level in (1, 2, 3):
        count = int(leaf[levels == level].sum())
        if count:
            state.stats.add_pages(level, -count)
    other_levels = pool.level[others].astype(np.int64)
    parent_zapped = (other_levels + 1 <= 3) | (other_levels + 1 == state.root_level)
    ctx.spte_changes += int(leaf.sum()) + len(others) * SPTE_ENT_PER_PAGE + int(parent_zapped.sum())
    listed = int(pool.nx_listed[others].sum())
    state.stats.nx_lpage_splits -= listed
    pool.nx_listed[others] = False
    pool.release_many(slots)


def zap_all_fast(state: VmState, ctx: OpContext) -> None:
    """kvm_mmu_zap_all_fast: invalidate and zap the direct root; the mirror root survives.

    The tracepoint shows mmu_valid_gen before the toggle, and the shadow MMU's used
    pages, which the TDP MMU never has (not in the spec: taken as 0).
    """
    ctx.emit("kvm_mmu_zap_all_fast", state.mmu_valid_gen, 0)
    state.mmu_valid_gen ^= 1
    zap_root(state, ctx, TREE_DIRECT)


def wrprot_gfn_range(state: VmState, ctx: OpContext, start: int, end: int, min_level: int) -> None:
    """kvm_tdp_mmu_wrprot_slot: clear W on writable leaves at min_level and above."""
    for tree, root in state.roots():
        it = TdpIter(state, tree, root, min_level, start, end, ctx.warnings)
        while it.valid and it.gfn < end:
            spte = it.old_spte
            if _is_leaf(spte, it.level) and spte & PT_WRITABLE_MASK:
                set_spte(state, ctx, it, spte & ~PT_WRITABLE_MASK, shared=True)
            it.next()
