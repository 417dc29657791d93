"""Bit helpers with the kernel's names (include/linux/bits.h, mmu.h)."""

from __future__ import annotations

from typing import Final, NewType

U64_MASK: Final = (1 << 64) - 1

Spte = NewType("Spte", int)
Gfn = NewType("Gfn", int)
Gpa = NewType("Gpa", int)
Pfn = NewType("Pfn", int)


def BIT(n: int) -> int:  # noqa: N802 - kernel name
    return 1 << n


def GENMASK(h: int, l: int) -> int:  # noqa: N802, E741 - kernel name
    """Bits l..h inclusive; empty when h < l."""
    if h < l:
        return 0
    return ((1 << (h - l + 1)) - 1) << l


def rsvd_bits(s: int, e: int) -> int:
    """Bits s..e set (empty if e < s), as mmu.h's rsvd_bits()."""
    return GENMASK(e, s)


def fits_u64(value: int) -> bool:
    return 0 <= value <= U64_MASK
