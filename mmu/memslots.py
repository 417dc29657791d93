"""Memslots of address space 0 and KVM's memslot generation (spec section 4).

Holds the slots, their large-page metadata (lpage_info: which huge frames a
slot disallows) and dirty bitmaps, and answers GFN lookups one at a time or
for whole numpy arrays.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mmu.constants import (
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_PAGES_PER_HPAGE,
    PG_LEVEL_1G,
    PG_LEVEL_2M,
    PG_LEVEL_4K,
)

VALID_FLAGS = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY | KVM_MEM_GUEST_MEMFD
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1  # x86: a memslot's npages must fit in 31 bits
HUGE_LEVELS = (PG_LEVEL_2M, PG_LEVEL_1G)


@dataclass(frozen=True, slots=True)
class Memslot:
    """One KVM memslot as userspace describes it, plus the model's host stubs."""

    id: int
    base_gfn: int
    npages: int
    flags: int = 0
    userspace_addr: int = 0  # HVA of page 0; only its low bits matter (large-page congruence)
    host_pfn_base: int = 0  # PFN backing base_gfn (shared memory)
    backing_level: int = PG_LEVEL_4K  # host page size: 1 = 4K, 2 = 2M, 3 = 1G
    gmem_pfn_base: int | None = None  # PFN of base_gfn in guest_memfd (private memory)

    @property
    def end_gfn(self) -> int:
        return self.base_gfn + self.npages

    @property
    def readonly(self) -> bool:
        return bool(self.flags & KVM_MEM_READONLY)

    @property
    def log_dirty(self) -> bool:
        return bool(self.flags & KVM_MEM_LOG_DIRTY_PAGES)

    @property
    def guest_memfd(self) -> bool:
        return bool(self.flags & KVM_MEM_GUEST_MEMFD)

    def contains(self, gfn: int) -> bool:
        return self.base_gfn <= gfn < self.end_gfn

    def hva_incongruent(self, level: int) -> bool:
        """GPA and HVA not congruent modulo the huge page size: no huge pages at all."""
        return bool(
            (self.base_gfn ^ (self.userspace_addr >> 12)) & (KVM_PAGES_PER_HPAGE(level) - 1)
        )

    def frame(self, gfn: int, level: int) -> int:
        shift = 9 * (level - 1)
        return (gfn >> shift) - (self.base_gfn >> shift)

    def nframes(self, level: int) -> int:
        shift = 9 * (level - 1)
        return ((self.end_gfn - 1) >> shift) - (self.base_gfn >> shift) + 1

    def edge_disallowed(self, gfn: int, level: int) -> bool:
        """The head/tail/HVA rules of kvm_alloc_memslot_metadata for one frame."""
        size = KVM_PAGES_PER_HPAGE(level)
        frame = self.frame(gfn, level)
        if frame == 0 and self.base_gfn % size:
            return True
        if frame == self.nframes(level) - 1 and self.end_gfn % size:
            return True
        return self.hva_incongruent(level)


@dataclass(slots=True)
class SlotState:
    """Mutable per-slot metadata: the dirty bitmap and mixed-attribute frames."""

    slot: Memslot
    dirty_bitmap: npt.NDArray[np.uint64] | None = None
    mixed: dict[int, set[int]] = field(default_factory=lambda: {2: set(), 3: set()})

    def lpage_disallowed(self, gfn: int, level: int) -> bool:
        return (
            self.slot.edge_disallowed(gfn, level)
            or self.slot.frame(gfn, level) in self.mixed[level]
        )

    def max_lpage_level(self, gfn: int, max_level: int) -> int:
        """kvm_mmu_max_mapping_level's walk down lpage_info."""
        level = max_level
        while level > PG_LEVEL_4K and self.lpage_disallowed(gfn, level):
            level -= 1
        return level

    def mark_dirty(self, gfn: int) -> bool:
        if self.dirty_bitmap is None:
            return False
        offset = gfn - self.slot.base_gfn
        self.dirty_bitmap[offset >> 6] |= np.uint64(1 << (offset & 63))
        return True


class Memslots:
    """The memslot set of address space 0, sorted by base GFN."""

    def __init__(self, generation: int = 0) -> None:
        self.generation = generation
        self.by_id: dict[int, SlotState] = {}
        self._bases: list[int] = []
        self._states: list[SlotState] = []
        self.base_array: npt.NDArray[np.uint64] = np.zeros(0, dtype=np.uint64)
        self.end_array: npt.NDArray[np.uint64] = np.zeros(0, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.by_id)

    def states(self) -> list[SlotState]:
        return list(self._states)

    def get(self, slot_id: int) -> SlotState | None:
        return self.by_id.get(slot_id)

    def lookup(self, gfn: int) -> SlotState | None:
        i = bisect.bisect_right(self._bases, gfn) - 1
        if i >= 0:
            state = self._states[i]
            if gfn < state.slot.end_gfn:
                return state
        return None

    def lookup_many(self, gfns: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Index into `states()` per GFN, -1 where no slot backs it."""
        if not self._states:
            return np.full(len(gfns), -1, dtype=np.int64)
        idx = np.searchsorted(self.base_array, gfns, side="right").astype(np.int64) - 1
        safe = np.maximum(idx, 0)
        hit = (idx >= 0) & (gfns < self.end_array[safe])
        return np.where(hit, idx, -1)

    def overlapping(
        self, base_gfn: int, npages: int, ignore: int | None = None
    ) -> SlotState | None:
        end = base_gfn + npages
        for state in self._states:
            if (
                state.slot.id != ignore
                and state.slot.base_gfn < end
                and base_gfn < state.slot.end_gfn
            ):
                return state
        return None

    def slots_overlapping(self, start: int, end: int) -> list[SlotState]:
        return [s for s in self._states if s.slot.base_gfn < end and start < s.slot.end_gfn]

    def install(self, state: SlotState) -> None:
        self.by_id[state.slot.id] = state
        self._rebuild()

    def remove(self, slot_id: int) -> SlotState:
        state = self.by_id.pop(slot_id)
        self._rebuild()
        return state

    def _rebuild(self) -> None:
        self._states = sorted(self.by_id.values(), key=lambda s: s.slot.base_gfn)
        self._bases = [s.slot.base_gfn for s in self._states]
        self.base_array = np.array(self._bases, dtype=np.uint64)
        self.end_array = np.array([s.slot.end_gfn for s in self._states], dtype=np.uint64)
