"""Reserved-bit tables of the TDP MMU (reset_tdp_shadow_zero_bits_mask).

`is_rsvd_spte()` is what KVM uses to flag SPTEs it built wrongly and to
check the walk of a reserved-bit fault (spec section 7). Shadow paging
depends on guest CPUID and is out of scope: such hosts have no table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from mmu.bits import BIT, rsvd_bits
from mmu.constants import PT_PAGE_SIZE_MASK, VMX_EPT_EXECUTABLE_MASK, VMX_EPT_USER_EXECUTABLE_MASK

if TYPE_CHECKING:
    from mmu.host import Host

# EPT memory types 2, 3 and 7 and XWR patterns 010, 110 and (execute-only
# disallowed) 100, as a 64-bit lookup indexed by SPTE bits 0..5.
EPT_BAD_MT_XWR: Final = 0xFF545454FFFF5454
EPT_MT_BITS_3_6: Final = rsvd_bits(3, 6)
EPT_BITS_3_7: Final = rsvd_bits(3, 7)


@dataclass(frozen=True, slots=True)
class RsvdTable:
    """rsvd_bits_mask[bit7][level-1] and the bad_mt_xwr lookup."""

    masks: tuple[tuple[int, ...], tuple[int, ...]]
    bad_mt_xwr: int
    fold_xu_into_x: bool

    def mask_for(self, spte: int, level: int) -> int:
        return self.masks[(spte >> 7) & 1][level - 1]

    def is_bad_mt_xwr(self, spte: int) -> bool:
        low = spte & 0x3F
        if self.fold_xu_into_x and spte & VMX_EPT_USER_EXECUTABLE_MASK:
            low |= VMX_EPT_EXECUTABLE_MASK
        return bool((self.bad_mt_xwr >> low) & 1)

    def is_rsvd_spte(self, spte: int, level: int) -> bool:
        return self.is_bad_mt_xwr(spte) or bool(spte & self.mask_for(spte, level))


def _ept_table(high: int, huge_level: int) -> tuple[list[int], list[int]]:
    no_2m = PT_PAGE_SIZE_MASK if huge_level < 2 else 0
    no_1g = PT_PAGE_SIZE_MASK if huge_level < 3 else 0
    small = [
        high,
        high | EPT_MT_BITS_3_6 | no_2m,
        high | EPT_MT_BITS_3_6 | no_1g,
        high | EPT_BITS_3_7,
        high | EPT_BITS_3_7,
    ]
    large = [
        high,
        high | rsvd_bits(12, 20) | no_2m,
        high | rsvd_bits(12, 29) | no_1g,
        high | EPT_BITS_3_7,
        high | EPT_BITS_3_7,
    ]
    return small, large


def _npt_table(high: int, gbpages: bool, root_level: int) -> tuple[list[int], list[int]]:
    no_1g = 0 if gbpages else PT_PAGE_SIZE_MASK
    top = high | BIT(8) | BIT(7)
    level5 = top if root_level == 5 else 0
    small = [high, high, high | no_1g, top, level5]
    large = [high, high | rsvd_bits(13, 20), high | no_1g | rsvd_bits(13, 29), top, level5]
    return small, large


def build_tdp_rsvd_table(host: Host) -> RsvdTable:
    cfg = host.config
    reserved_hpa_bits = rsvd_bits(cfg.maxphyaddr, 63)
    high = reserved_hpa_bits & rsvd_bits(0, 51)
    if cfg.mmu == "ept":
        small, large = _ept_table(high, host.max_huge_page_level)
        bad = EPT_BAD_MT_XWR
    else:
        small, large = _npt_table(high, cfg.gbpages, cfg.max_tdp_level)
        bad = 0
    # Key-ID / C-bits are legal in every entry.
    keep = ~host.shadow_me_mask
    masks = (tuple(m & keep for m in small), tuple(m & keep for m in large))
    return RsvdTable(masks=masks, bad_mt_xwr=bad, fold_xu_into_x=host.layout.rsvd_fold_xu_into_x)
