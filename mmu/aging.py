"""Access tracking of MMU-notifier ranges (kvm_tdp_mmu_age_gfn_range; spec 8.11).

Only direct roots age (MMU-notifier ranges are shared-only). A/D-enabled
SPTEs lose A; others are access-tracked (R/X saved high, RWX and A cleared),
so the next access takes the fast path and restores them.
"""

from __future__ import annotations

from mmu.constants import PG_LEVEL_4K, PT_PAGE_SIZE_MASK, SPTE_MMU_PRESENT_MASK
from mmu.events import OpContext
from mmu.pool import TREE_DIRECT
from mmu.spte import mark_spte_for_access_track, spte_ad_enabled
from mmu.state import VmState
from mmu.tdp_iter import TdpIter
from mmu.tdp_mmu import write_spte_direct


def age_range(state: VmState, ctx: OpContext, start: int, end: int, test_only: bool) -> bool:
    """clear_young (or test_young) of the HVAs backing [start, end), per overlapping slot."""
    young = False
    host = state.host
    accessed = host.shadow_accessed_mask
    root = state.direct_root
    if root is None:
        return False
    for slot_state in state.memslots.slots_overlapping(start, end):
        lo = max(start, slot_state.slot.base_gfn)
        hi = min(end, slot_state.slot.end_gfn)
        it = TdpIter(state, TREE_DIRECT, root, PG_LEVEL_4K, lo, hi, ctx.warnings)
        while it.valid and it.gfn < hi:
            spte, level = it.old_spte, it.level
            leaf = spte & SPTE_MMU_PRESENT_MASK and (
                level == PG_LEVEL_4K or spte & PT_PAGE_SIZE_MASK
            )
            if leaf and spte & accessed:
                if test_only:
                    return True
                young = True
                if spte_ad_enabled(host.layout, spte):
                    new = spte & ~accessed
                else:
                    new = mark_spte_for_access_track(host, spte, ctx.warnings)
                write_spte_direct(state, ctx, it, new)
            it.next()
    return young
