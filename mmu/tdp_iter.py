"""The TDP iterator (tdp_iter.c): a pre-order walk of one root over a GFN range.

Visits the entry containing `start` at every level down to `min_level`,
stepping down into present non-leaf entries (re-read after the caller's loop
body ran), sideways to the next entry, and up at the end of a table. GFNs
are stripped of `gfn_bits`; table indices are computed with them.
"""

from __future__ import annotations

from mmu.constants import KVM_PAGES_PER_HPAGE, PT_PAGE_SIZE_MASK, SPTE_MMU_PRESENT_MASK
from mmu.state import VmState


class TdpIter:
    __slots__ = (
        "as_id",
        "end",
        "entries",
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
        gfn_bits: int | None = None,
        root_level: int | None = None,
    ) -> None:
        self.state = state
        self.tree = tree
        self.entries = state.pool.entries
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
            self.valid = False  # the kernel WARNs and walks nothing
            return
        self.next_last_level_gfn = start
        self.gfn = start & -KVM_PAGES_PER_HPAGE(self.level)
        self._refresh()
        self.valid = True

    def _refresh(self) -> None:
        self.slot = self.path[self.level]
        self.index = ((self.gfn | self.gfn_bits) >> (9 * (self.level - 1))) & 511
        self.old_spte = int(self.entries[self.slot, self.index])

    def reread(self) -> int:
        self.old_spte = int(self.entries[self.slot, self.index])
        return self.old_spte

    def _try_step_down(self) -> bool:
        if self.level == self.min_level:
            return False
        spte = self.reread()
        if not spte & SPTE_MMU_PRESENT_MASK or spte & PT_PAGE_SIZE_MASK or self.level == 1:
            return False
        self.level -= 1
        self.path[self.level] = self.state.child_slot(spte)
        self.gfn = self.next_last_level_gfn & -KVM_PAGES_PER_HPAGE(self.level)
        self._refresh()
        return True

    def _try_step_side(self) -> bool:
        # The end-of-table test uses the GFN (with gfn_bits); the entry pointer just
        # advances, exactly as tdp_iter.c does.
        if ((self.gfn | self.gfn_bits) >> (9 * (self.level - 1))) & 511 == 511 or self.index == 511:
            return False
        self.gfn += KVM_PAGES_PER_HPAGE(self.level)
        self.next_last_level_gfn = self.gfn
        self.index += 1
        self.old_spte = int(self.entries[self.slot, self.index])
        return True

    def _try_step_up(self) -> bool:
        if self.level == self.root_level:
            return False
        self.level += 1
        self.gfn &= -KVM_PAGES_PER_HPAGE(self.level)
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
