"""numpy-vectorised SPTE functions for arrays of values.

Each function computes exactly what its scalar counterpart in `spte` /
`mmio` computes, element by element (tests check the equivalence); they
do not record warnings. Arrays are uint64.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import numpy.typing as npt

from mmu.constants import (
    PG_LEVEL_4K,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    SHADOW_NONPRESENT_OR_RSVD_MASK_LEN,
    SHADOW_NONPRESENT_VALUE,
    SPTE_MMU_PRESENT_MASK,
)
from mmu.host import Host
from mmu.layout import MMIO_SPTE_GEN_LOW_SHIFT
from mmu.mmio import MmioVm, generation_mmio_spte_mask

U64 = np.uint64
U64Array = npt.NDArray[np.uint64]
IntArray = npt.NDArray[np.integer]


class SpteClass(IntEnum):
    """classify_sptes() codes."""

    NON_PRESENT = 0
    MMIO = 1
    LEAF = 2
    NON_LEAF = 3


def _u(value: int) -> np.uint64:
    return U64(value & 0xFFFFFFFFFFFFFFFF)


def as_u64(values: npt.ArrayLike) -> U64Array:
    return np.asarray(values, dtype=np.uint64)


def make_mmio_spte_batch(vm: MmioVm, gfns: npt.ArrayLike, access: int, generation: int) -> U64Array:
    """make_mmio_spte() for every GFN (same access and generation)."""
    host = vm.host
    gen = generation & host.layout.mmio_gen_mask
    constant = (
        generation_mmio_spte_mask(host.layout, gen)
        | vm.shadow_mmio_value
        | (access & host.shadow_mmio_access_mask)
        | host.shadow_nonpresent_or_rsvd_mask
    )
    gpa = as_u64(gfns) << U64(12)
    spte = gpa | _u(constant)
    rsvd = host.shadow_nonpresent_or_rsvd_mask
    if rsvd:
        spte |= (gpa & _u(rsvd)) << U64(SHADOW_NONPRESENT_OR_RSVD_MASK_LEN)
    return spte


def get_mmio_spte_gfn_batch(host: Host, sptes: npt.ArrayLike) -> U64Array:
    values = as_u64(sptes)
    rsvd = _u(host.shadow_nonpresent_or_rsvd_mask)
    gpa = (values & _u(host.shadow_nonpresent_or_rsvd_lower_gfn_mask)) | (
        (values >> U64(SHADOW_NONPRESENT_OR_RSVD_MASK_LEN)) & rsvd
    )
    return gpa >> U64(12)


def get_mmio_spte_generation_batch(host: Host, sptes: npt.ArrayLike) -> U64Array:
    layout = host.layout
    values = as_u64(sptes)
    return ((values & _u(layout.mmio_gen_low_mask)) >> U64(MMIO_SPTE_GEN_LOW_SHIFT)) | (
        (values & _u(layout.mmio_gen_high_mask)) >> U64(layout.mmio_gen_high_shift)
    )


def is_mmio_spte_batch(vm: MmioVm, sptes: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    values = as_u64(sptes)
    if not vm.host.enable_mmio_caching:
        return np.zeros(values.shape, dtype=np.bool_)
    matches: npt.NDArray[np.bool_] = (values & _u(vm.host.shadow_mmio_mask)) == _u(
        vm.shadow_mmio_value
    )
    return matches


def classify_sptes(
    vm: MmioVm, sptes: npt.ArrayLike, level: int = PG_LEVEL_4K
) -> npt.NDArray[np.int8]:
    """A SpteClass per value: MMIO for this VM, present (non-)leaf at `level`, or not present."""
    values = as_u64(sptes)
    out = np.zeros(values.shape, dtype=np.int8)
    present = (values & U64(SPTE_MMU_PRESENT_MASK)) != 0
    if level == PG_LEVEL_4K:
        out[present] = SpteClass.LEAF
    else:
        large = (values & U64(PT_PAGE_SIZE_MASK)) != 0
        out[present & large] = SpteClass.LEAF
        out[present & ~large] = SpteClass.NON_LEAF
    out[is_mmio_spte_batch(vm, values)] = SpteClass.MMIO
    return out


def _mark_for_access_track(host: Host, spte: U64Array) -> U64Array:
    layout = host.layout
    ad_enabled = (spte & _u(layout.ad_mask)) != _u(layout.ad_disabled)
    tracked = ~ad_enabled & ((spte & _u(host.shadow_acc_track_mask)) == U64(0))
    saved = (spte & _u(layout.acc_track_saved_bits_mask)) << U64(layout.acc_track_saved_bits_shift)
    marked = (spte | saved) & _u(~(host.shadow_acc_track_mask | host.shadow_accessed_mask))
    cleared_a = spte & _u(~host.shadow_accessed_mask)
    return np.where(ad_enabled, cleared_a, np.where(tracked, spte, marked))


def make_spte_batch(
    host: Host,
    *,
    level: int,
    pte_access: int,
    pfns: npt.ArrayLike,
    old_sptes: npt.ArrayLike | None = None,
    prefetch: bool = False,
    synchronizing: bool = False,
    host_writable: bool | npt.NDArray[np.bool_] = True,
    ad_disabled: bool = False,
    ad_need_write_protect: bool = False,
    mt_bits: int = 0,
    host_mmio_pfn: bool = False,
    unsync_denied: bool = False,
    nx_huge_pages: bool | None = None,
) -> tuple[U64Array, npt.NDArray[np.bool_]]:
    """make_spte() over arrays of PFNs (and old SPTEs / host-writable flags)."""
    layout = host.layout
    pfn_array = as_u64(pfns)
    if nx_huge_pages is None:
        nx_huge_pages = host.config.nx_huge_pages
    base = SPTE_MMU_PRESENT_MASK
    if ad_disabled:
        base |= layout.ad_disabled
    elif ad_need_write_protect:
        base |= layout.ad_wrprot_only
    base |= host.shadow_present_mask
    if not prefetch or synchronizing:
        base |= host.shadow_accessed_mask
    access = pte_access
    if level > PG_LEVEL_4K and nx_huge_pages:
        access &= ~(layout.acc_exec | (layout.acc_user if host.shadow_xu_mask else 0))
    if access & layout.acc_read:
        base |= PT_PRESENT_MASK
    base |= host.shadow_x_mask if access & layout.acc_exec else host.shadow_nx_mask
    if access & layout.acc_user:
        base |= host.shadow_user_mask | host.shadow_xu_mask
    if level > PG_LEVEL_4K:
        base |= PT_PAGE_SIZE_MASK
    if host.has_get_mt_mask:
        base |= mt_bits
    if host.shadow_me_value and not host_mmio_pfn:
        base |= host.shadow_me_value
    spte = (pfn_array << U64(12)) | _u(base)
    writable_bits = _u(PT_WRITABLE_MASK | host.shadow_mmu_writable_mask | host.shadow_dirty_mask)
    host_w = np.broadcast_to(np.asarray(host_writable, dtype=np.bool_), spte.shape)
    spte = np.where(host_w, spte | _u(host.shadow_host_writable_mask), spte)
    wants_write = host_w & bool(access & layout.acc_write)
    if unsync_denied:
        if old_sptes is None:
            old = np.full(spte.shape, SHADOW_NONPRESENT_VALUE, dtype=np.uint64)
        else:
            old = np.broadcast_to(as_u64(old_sptes), spte.shape)
        old_leaf = np.full(spte.shape, level == PG_LEVEL_4K) | ((old & U64(PT_PAGE_SIZE_MASK)) != 0)
        old_writable_leaf = old_leaf & ((old & U64(PT_WRITABLE_MASK)) != 0)
        wrprot = wants_write & ~old_writable_leaf
    else:
        wrprot = np.zeros(spte.shape, dtype=np.bool_)
    spte = np.where(wants_write & ~wrprot, spte | writable_bits, spte)
    if prefetch and not synchronizing:
        spte = _mark_for_access_track(host, spte)
    return spte, wrprot
