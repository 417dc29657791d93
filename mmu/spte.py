"""Present SPTEs: make_spte, make_nonleaf_spte, predicates, access tracking,
huge-page split/collapse (spec sections 6 and 12.5-12.7; spte.h / spte.c).

SPTEs are plain ints. Warnings are appended, under the vectors' names, to
the optional `warnings` list: KVM WARNs and carries on, so does the model.
"""

from __future__ import annotations

from mmu.bits import GENMASK, U64_MASK
from mmu.constants import (
    KVM_PAGES_PER_HPAGE,
    PG_LEVEL_4K,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    SHADOW_NONPRESENT_VALUE,
    SPTE_LEVEL_BITS,
    SPTE_MMU_PRESENT_MASK,
)
from mmu.host import Host
from mmu.layout import SpteLayout

# --- predicates (spte.h) ---------------------------------------------------


def is_shadow_present_pte(spte: int) -> bool:
    return bool(spte & SPTE_MMU_PRESENT_MASK)


def is_frozen_spte(layout: SpteLayout, spte: int) -> bool:
    return spte == layout.frozen_spte


def is_large_pte(spte: int) -> bool:
    return bool(spte & PT_PAGE_SIZE_MASK)


def is_last_spte(spte: int, level: int) -> bool:
    return level == PG_LEVEL_4K or is_large_pte(spte)


def spte_to_pfn(host: Host, spte: int) -> int:
    return (spte & host.spte_base_addr_mask) >> 12


def is_writable_pte(spte: int) -> bool:
    return bool(spte & PT_WRITABLE_MASK)


def is_mmu_writable_spte(host: Host, spte: int) -> bool:
    return bool(spte & host.shadow_mmu_writable_mask)


def is_accessed_spte(host: Host, spte: int) -> bool:
    return bool(spte & host.shadow_accessed_mask)


def is_dirty_spte(host: Host, spte: int) -> bool:
    """D when A/D is enabled for the SPTE, else W (the old kernel helper; used by dirty logging)."""
    if spte_ad_enabled(host.layout, spte):
        return bool(spte & host.shadow_dirty_mask)
    return is_writable_pte(spte)


def is_executable_pte(host: Host, spte: int) -> bool:
    exec_bits = host.shadow_x_mask | host.shadow_xu_mask | host.shadow_nx_mask
    return (spte & exec_bits) != host.shadow_nx_mask


def spte_ad_enabled(layout: SpteLayout, spte: int) -> bool:
    return (spte & layout.ad_mask) != layout.ad_disabled


def spte_ad_need_write_protect(layout: SpteLayout, spte: int) -> bool:
    return (spte & layout.ad_mask) != 0


def is_access_track_spte(host: Host, spte: int) -> bool:
    return not spte_ad_enabled(host.layout, spte) and (spte & host.shadow_acc_track_mask) == 0


def is_rsvd_spte(host: Host, spte: int, level: int) -> bool | None:
    """None for shadow-paging hosts, whose table depends on guest CPUID."""
    if host.rsvd is None:
        return None
    return host.rsvd.is_rsvd_spte(spte, level)


def leaf_spte_change_needs_tlb_flush(host: Host, old: int, new: int) -> bool:
    return is_mmu_writable_spte(host, old) and not is_mmu_writable_spte(host, new)


def spte_index(gpa: int, level: int) -> int:
    return (gpa >> (12 + SPTE_LEVEL_BITS * (level - 1))) & 0x1FF


# --- invariants and access tracking -----------------------------------------


def check_spte_writable_invariants(host: Host, spte: int, warnings: list[str] | None) -> None:
    if warnings is None:
        return
    if spte & host.shadow_mmu_writable_mask:
        if not spte & host.shadow_host_writable_mask:
            warnings.append("mmu_writable_not_host_writable")
    elif is_writable_pte(spte):
        warnings.append("writable_not_mmu_writable")


def mark_spte_for_access_track(host: Host, spte: int, warnings: list[str] | None = None) -> int:
    """Clear A, or (A/D disabled) save R/X(/XU) high up and clear RWX so the next access faults."""
    layout = host.layout
    if spte_ad_enabled(layout, spte):
        return spte & ~host.shadow_accessed_mask
    if is_access_track_spte(host, spte):
        return spte
    check_spte_writable_invariants(host, spte, warnings)
    if warnings is not None and spte & layout.acc_track_saved_mask_in_place:
        warnings.append("acc_track_saved_bits_not_zero")
    spte |= (spte & layout.acc_track_saved_bits_mask) << layout.acc_track_saved_bits_shift
    return spte & ~(host.shadow_acc_track_mask | host.shadow_accessed_mask)


def restore_acc_track_spte(host: Host, spte: int) -> int:
    layout = host.layout
    saved = (spte >> layout.acc_track_saved_bits_shift) & layout.acc_track_saved_bits_mask
    spte &= ~(host.shadow_acc_track_mask | layout.acc_track_saved_mask_in_place)
    return spte | saved


def modify_spte_protections(host: Host, spte: int, set_bits: int, clear_bits: int) -> int:
    tracked = is_access_track_spte(host, spte)
    if tracked:
        spte = restore_acc_track_spte(host, spte)
    spte = (spte | set_bits) & ~clear_bits
    if tracked:
        spte = mark_spte_for_access_track(host, spte)
    return spte


def change_spte_executable(host: Host, spte: int, access: int) -> int:
    """Make X/XU (or NX) match `access`; v6's make_spte_(non)executable are special cases."""
    layout = host.layout
    if host.shadow_nx_mask:
        set_bits = 0 if access & layout.acc_exec else host.shadow_nx_mask
    else:
        set_bits = (host.shadow_x_mask if access & layout.acc_exec else 0) | (
            host.shadow_xu_mask if access & layout.acc_user else 0
        )
    all_exec = host.shadow_nx_mask | host.shadow_x_mask | host.shadow_xu_mask
    return modify_spte_protections(host, spte, set_bits, set_bits ^ all_exec)


# --- constructors (spte.c) --------------------------------------------------


def make_spte(
    host: Host,
    *,
    level: int,
    pte_access: int,
    pfn: int,
    old_spte: int = SHADOW_NONPRESENT_VALUE,
    prefetch: bool = False,
    synchronizing: bool = False,
    host_writable: bool = True,
    ad_disabled: bool = False,
    ad_need_write_protect: bool = False,
    mt_bits: int = 0,
    host_mmio_pfn: bool = False,
    unsync_denied: bool = False,
    nx_huge_pages: bool | None = None,
    warnings: list[str] | None = None,
) -> tuple[int, bool]:
    """Build a leaf SPTE exactly as make_spte() does; returns (spte, wrprot)."""
    return make_spte_args(
        host,
        level,
        pte_access,
        pfn,
        old_spte,
        prefetch,
        synchronizing,
        host_writable,
        ad_disabled,
        ad_need_write_protect,
        mt_bits,
        host_mmio_pfn,
        unsync_denied,
        host.config.nx_huge_pages if nx_huge_pages is None else nx_huge_pages,
        warnings,
    )


def make_spte_args(
    host: Host,
    level: int,
    pte_access: int,
    pfn: int,
    old_spte: int,
    prefetch: bool,
    synchronizing: bool,
    host_writable: bool,
    ad_disabled: bool,
    ad_need_write_protect: bool,
    mt_bits: int,
    host_mmio_pfn: bool,
    unsync_denied: bool,
    nx_huge_pages: bool,
    warnings: list[str] | None,
) -> tuple[int, bool]:
    """make_spte() with every input positional (see make_spte for the steps)."""
    layout = host.layout
    spte = SPTE_MMU_PRESENT_MASK
    if warnings is not None and (pte_access | host.shadow_present_mask) == SHADOW_NONPRESENT_VALUE:
        warnings.append("access_and_present_mask_is_nonpresent")
    if ad_disabled:
        spte |= layout.ad_disabled
    elif ad_need_write_protect:
        spte |= layout.ad_wrprot_only
    spte |= host.shadow_present_mask
    if not prefetch or synchronizing:
        spte |= host.shadow_accessed_mask
    if level > PG_LEVEL_4K and nx_huge_pages:
        # Huge pages are never executable under the iTLB-multihit mitigation.
        pte_access &= ~(layout.acc_exec | (layout.acc_user if host.shadow_xu_mask else 0))
    if pte_access & layout.acc_read:
        spte |= PT_PRESENT_MASK
    spte |= host.shadow_x_mask if pte_access & layout.acc_exec else host.shadow_nx_mask
    if pte_access & layout.acc_user:
        spte |= host.shadow_user_mask | host.shadow_xu_mask
    if level > PG_LEVEL_4K:
        spte |= PT_PAGE_SIZE_MASK
    if host.has_get_mt_mask:
        spte |= mt_bits
    if host_writable:
        spte |= host.shadow_host_writable_mask
    else:
        pte_access &= ~layout.acc_write
    if host.shadow_me_value and not host_mmio_pfn:
        spte |= host.shadow_me_value
    spte |= (pfn << 12) & U64_MASK
    wrprot = False
    if pte_access & layout.acc_write:
        old_writable_leaf = is_last_spte(old_spte, level) and is_writable_pte(old_spte)
        if not old_writable_leaf and unsync_denied:
            wrprot = True
        else:
            spte |= PT_WRITABLE_MASK | host.shadow_mmu_writable_mask | host.shadow_dirty_mask
    if prefetch and not synchronizing:
        spte = mark_spte_for_access_track(host, spte, warnings)
    if warnings is not None and host.rsvd is not None and host.rsvd.is_rsvd_spte(spte, level):
        warnings.append("reserved_bits_set")
    return spte, wrprot


def make_nonleaf_spte(host: Host, child_pa: int, ad_disabled: bool) -> int:
    """A pointer to a child table: everything allowed, permissions live in the leaves."""
    spte = (
        SPTE_MMU_PRESENT_MASK
        | child_pa
        | host.shadow_present_mask
        | PT_WRITABLE_MASK
        | PT_PRESENT_MASK
        | host.shadow_user_mask
        | host.shadow_x_mask
        | host.shadow_xu_mask
        | host.shadow_me_value
    )
    return spte | (host.layout.ad_disabled if ad_disabled else host.shadow_accessed_mask)


def make_small_spte(
    host: Host,
    huge_spte: int,
    child_level: int,
    child_access: int,
    index: int,
    warnings: list[str] | None = None,
) -> int:
    """One child of a huge SPTE being split; A/D, W and software bits are inherited."""
    if warnings is not None and not (is_shadow_present_pte(huge_spte) and is_large_pte(huge_spte)):
        warnings.append("kvm_bug_not_present_huge")
    child = huge_spte | ((index * KVM_PAGES_PER_HPAGE(child_level)) << 12)
    if child_level == PG_LEVEL_4K:
        child &= ~PT_PAGE_SIZE_MASK
        if host.config.nx_huge_pages and (
            host.layout.split_resets_exec_from_role or child_access & host.layout.acc_exec
        ):
            child = change_spte_executable(host, child, child_access)
    return child & U64_MASK


def make_huge_spte(
    host: Host, small_spte: int, level: int, warnings: list[str] | None = None
) -> int:
    """Collapse: set PS, drop the address bits below the huge page size."""
    if warnings is not None and (not is_shadow_present_pte(small_spte) or level == PG_LEVEL_4K):
        warnings.append("kvm_bug_not_present_or_4k")
    huge = small_spte | PT_PAGE_SIZE_MASK
    huge &= ~GENMASK(12 + SPTE_LEVEL_BITS * (level - 1) - 1, 12)
    if host.config.nx_huge_pages:
        huge = change_spte_executable(host, huge, 0)
    return huge
