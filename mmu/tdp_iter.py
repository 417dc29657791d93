"""The TDP iterator (tdp_iter.c): a pre-order walk of one root over a GFN range.

Visits the entry containing `start` at every level down to `min_level`,
stepping down into present non-leaf entries (re-read after the caller's loop
body ran), sideways to the next entry, and up at the end of a table. GFNs
are stripped of `gfn_bits`; table indices are computed with them.
"""

from __future__ import annotations

from typing import Protocol

from mmu.constants import PT_PAGE_SIZE_MASK, SPTE_MMU_PRESENT_MASK
from mmu.pool import TABLE_PFN_BASE
from mmu.state import VmState


class Entry(Protocol):
    """Where a walk stands: the SPTE it read and where it lives."""

    slot: int
    index: int
    gfn: int
    level: int
    old_spte: int


# KVM_PAGES_PER_HPAGE(level) by level.
PAGES = (0, 1, 1 << 9, 1 << 18, 1 << 27, 1 << 36)


# The WARN of tdp_iter_start when the walk starts at or above the root's gfn_bits
# (a TDX shared bit already in the GFN). Not in the vector README's list of names.
ITER_START_WARNING = "tdp_iter_start_beyond_gfn_bits"


class TdpIter:
    __slots__ = (
        "as_id",
        "base_mask",
        "end",
        "flat",
        "gfn",
        "gfn_bits",
        "index",
        "level",
        "min_level",
        "next_last_level_gfn",
        "old_spte",
        "path",
        "root_level",
        "slot",
        "slot_of_serial",
        "state",
        "tree",
        "valid",
    )

    def __init__(
        self,
        state: VmState,
        tree: int,
        root: int,
        min_level: int,
        start: int,
        end: int,
        warnings: list[str],
        gfn_bits: int | None = None,
        root_level: int | None = None,
    ) -> None:
        self.state = state
        self.tree = tree
        self.flat = state.pool.flat
        self.slot_of_serial = state.pool.slot_of_serial_view
        self.base_mask = state.host.spte_base_addr_mask
        self.gfn_bits = state.root_gfn_bits(tree) if gfn_bits is None else gfn_bits
        self.root_level = state.root_level if root_level is None else root_level
        self.min_level = min_level
        self.end = end
        self.as_id = 0
        self.path = [0] * 6
        self.path[self.root_level] = root
        self.level = self.root_level
        self.gfn = 0
        self.slot = root
        self.index = 0
        self.old_spte = 0
        if self.gfn_bits and start >= self.gfn_bits:
            warnings.append(ITER_START_WARNING)  # and walks nothing (spec 8.2)
            self.valid = False
            return
        self.next_last_level_gfn = start
        self.gfn = start & -PAGES[self.level]
        self._refresh()
        self.valid = True

    def _refresh(self) -> None:
        self.slot = self.path[self.level]
        self.index = ((self.gfn | self.gfn_bits) >> (9 * (self.level - 1))) & 511
        self.old_spte = self.flat[(self.slot << 9) | self.index]

    def reread(self) -> int:
        self.old_spte = self.flat[(self.slot << 9) | self.index]
        return self.old_spte

    def _try_step_down(self) -> bool:
        if self.level == self.min_level:
            return False
        spte = self.old_spte = self.flat[(self.slot << 9) | self.index]
        if not spte & SPTE_MMU_PRESENT_MASK or spte & PT_PAGE_SIZE_MASK or self.level == 1:
            return False
        self.level -= 1
        self.path[self.level] = self.slot_of_serial[
            ((spte & self.base_mask) >> 12) - TABLE_PFN_BASE
        ]
        self.gfn = self.next_last_level_gfn & -PAGES[self.level]
        self._refresh()
        return True

    def _try_step_side(self) -> bool:
        # The end-of-table test uses the GFN (with gfn_bits); the entry pointer just
        # advances, exactly as tdp_iter.c does.
        if ((self.gfn | self.gfn_bits) >> (9 * (self.level - 1))) & 511 == 511 or self.index == 511:
            return False
        self.gfn += PAGES[self.level]
        self.next_last_level_gfn = self.gfn
        self.index += 1
        self.old_spte = self.flat[(self.slot << 9) | self.index]
        return True

    def _try_step_up(self) -> bool:
        if self.level == self.root_level:
            return False
        self.level += 1
        self.gfn &= -PAGES[self.level]
        self._refresh()
        return True

    def next(self) -> None:
        if self._try_step_down():
            return
        while True:
            if self._try_step_side():
                return
            if not self._try_step_up():
                break
        self.valid = False


class GfnWalk:
    """for_each_tdp_pte(iter, kvm, root, gfn, gfn + 1), specialised to one GFN.

    With a one-GFN range the iterator only ever steps down: after the first
    entry it cannot descend into, its side step leaves the range and the walk
    ends. This walker does exactly that with less machinery; it has the same
    fields as TdpIter so the SPTE-changing helpers accept either.
    """

    __slots__ = (
        "base_mask",
        "flat",
        "gfn",
        "gfn_bits",
        "index",
        "level",
        "old_spte",
        "slot",
        "slot_of_serial",
        "target",
        "valid",
    )

    def __init__(self, state: VmState, tree: int, root: int, gfn: int, warnings: list[str]) -> None:
        pool = state.pool
        self.flat = pool.flat
        self.slot_of_serial = pool.slot_of_serial_view
        self.base_mask = state.host.spte_base_addr_mask
        self.gfn_bits = state.root_gfn_bits(tree)
        self.target = gfn
        self.level = state.root_level
        self.slot = root
        self.valid = not (self.gfn_bits and gfn >= self.gfn_bits)
        if not self.valid:
            warnings.append(ITER_START_WARNING)
        self.index = 0
        self.gfn = 0
        self.old_spte = 0
        if self.valid:
            self._load()

    def _load(self) -> None:
        shift = 9 * (self.level - 1)
        self.index = ((self.target | self.gfn_bits) >> shift) & 511
        self.gfn = (self.target >> shift) << shift
        self.old_spte = self.flat[(self.slot << 9) | self.index]

    def descend(self) -> bool:
        """Re-read the entry; step into it if it is a present non-leaf above level 1."""
        spte = self.old_spte = self.flat[(self.slot << 9) | self.index]
        if self.level == 1 or not spte & SPTE_MMU_PRESENT_MASK or spte & PT_PAGE_SIZE_MASK:
            return False
        self.slot = self.slot_of_serial[((spte & self.base_mask) >> 12) - TABLE_PFN_BASE]
        self.level -= 1
        self._load()
        return True
