"""Page-table pages of one VM: 512-entry uint64 tables in one reserved region.

Like KVM's page-table pages, memory is committed only when a table is first
used (the region is an anonymous MAP_NORESERVE mapping), so a VM costs about
8 bytes per mapped 4K page. Freed tables are reused.

Physical addresses follow the vectors' convention: the n-th table allocated
in a VM (roots included, counting from 0, never reused) lives at
`(TABLE_PFN_BASE + n) << 12`. `slot_of_serial` maps that number back to the
storage slot, so a non-leaf SPTE leads to its child table in O(1).
"""

from __future__ import annotations

import mmap
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from mmu.constants import SHADOW_NONPRESENT_VALUE, SPTE_ENT_PER_PAGE
from mmu.errors import LimitExceeded

TABLE_PFN_BASE: Final = 0x7000000
MAP_NORESERVE: Final = getattr(mmap, "MAP_NORESERVE", 0x4000)
DEFAULT_MAX_TABLES: Final = 1 << 18  # 134M entries; 1 GiB of address space, committed lazily
SERIAL_SPACE: Final = 1 << 27

TREE_FREE: Final = 0
TREE_DIRECT: Final = 1
TREE_MIRROR: Final = 2


def lazy_array(length: int, dtype: npt.DTypeLike) -> tuple[mmap.mmap, npt.NDArray[Any]]:
    """A zero-filled array whose pages are committed on first touch."""
    itemsize = np.dtype(dtype).itemsize
    size = max(length * itemsize, mmap.PAGESIZE)
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    return region, np.frombuffer(region, dtype=dtype, count=length)


class TablePool:
    """Storage for a VM's page tables and their per-table metadata (struct kvm_mmu_page)."""

    def __init__(self, max_tables: int = DEFAULT_MAX_TABLES) -> None:
        self.max_tables = max_tables
        self._regions: list[mmap.mmap] = []
        entries = self._lazy(max_tables * SPTE_ENT_PER_PAGE, np.uint64)
        self.entries: npt.NDArray[np.uint64] = entries.reshape(max_tables, SPTE_ENT_PER_PAGE)
        # The same memory as a flat memoryview: scalar reads and writes return and
        # take Python ints directly, several times faster than numpy item access.
        self.flat = memoryview(self._regions[0]).cast("Q")
        self.level: npt.NDArray[np.int8] = self._lazy(max_tables, np.int8)
        self.gfn: npt.NDArray[np.uint64] = self._lazy(max_tables, np.uint64)
        self.serial: npt.NDArray[np.int64] = self._lazy(max_tables, np.int64)
        self.serial_view = memoryview(self._regions[-1]).cast("q")
        self.tree: npt.NDArray[np.int8] = self._lazy(max_tables, np.int8)
        self.nx_disallowed: npt.NDArray[np.bool_] = self._lazy(max_tables, np.bool_)
        self.nx_listed: npt.NDArray[np.bool_] = self._lazy(max_tables, np.bool_)
        self.slot_of_serial: npt.NDArray[np.int32] = self._lazy(SERIAL_SPACE, np.int32)
        self.slot_of_serial_view = memoryview(self._regions[-1]).cast("i")
        self.high_water = 0
        self.free: list[int] = []
        self.next_serial = 0
        self.live = 0

    def _lazy(self, length: int, dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        region, array = lazy_array(length, dtype)
        self._regions.append(region)
        return array

    # --- allocation ---------------------------------------------------------

    def _take_slots(self, count: int) -> npt.NDArray[np.int64]:
        if self.live + count > self.max_tables:
            raise LimitExceeded(
                f"the VM would need more than {self.max_tables} page tables",
                limit="max_tables",
            )
        if self.next_serial + count > SERIAL_SPACE:
            raise LimitExceeded(
                f"the VM has allocated {SERIAL_SPACE} page tables over its life",
                limit="table_serials",
            )
        reused = min(count, len(self.free))
        slots = [self.free.pop() for _ in range(reused)]
        fresh = count - reused
        out = np.empty(count, dtype=np.int64)
        out[:reused] = slots
        out[reused:] = np.arange(self.high_water, self.high_water + fresh)
        self.high_water += fresh
        return out

    def alloc(self, level: int, gfn: int, tree: int, nx_disallowed: bool = False) -> int:
        """One new table, every entry SHADOW_NONPRESENT_VALUE."""
        slot = int(self._take_slots(1)[0])
        serial = self.next_serial
        self.next_serial += 1
        self.entries[slot].fill(SHADOW_NONPRESENT_VALUE)
        self.level[slot] = level
        self.gfn[slot] = gfn
        self.serial[slot] = serial
        self.tree[slot] = tree
        self.nx_disallowed[slot] = nx_disallowed
        self.nx_listed[slot] = False
        self.slot_of_serial[serial] = slot
        self.live += 1
        return slot

    def alloc_many(
        self, levels: npt.NDArray[np.int8], gfns: npt.NDArray[np.uint64], tree: int
    ) -> npt.NDArray[np.int64]:
        """Tables in allocation order (serials follow the order of the arrays)."""
        count = len(levels)
        slots = self._take_slots(count)
        serials = np.arange(self.next_serial, self.next_serial + count, dtype=np.int64)
        self.next_serial += count
        self.entries[slots] = SHADOW_NONPRESENT_VALUE
        self.level[slots] = levels
        self.gfn[slots] = gfns
        self.serial[slots] = serials
        self.tree[slots] = tree
        self.nx_disallowed[slots] = False
        self.nx_listed[slots] = False
        self.slot_of_serial[serials] = slots
        self.live += count
        return slots

    def release(self, slot: int) -> None:
        self.tree[slot] = TREE_FREE
        self.slot_of_serial[self.serial[slot]] = -1
        self.free.append(slot)
        self.live -= 1

    def release_many(self, slots: npt.NDArray[np.int64]) -> None:
        if len(slots) == 0:
            return
        self.tree[slots] = TREE_FREE
        self.slot_of_serial[self.serial[slots]] = -1
        self.free.extend(int(s) for s in slots)
        self.live -= len(slots)
        if self.live == 0:
            self.reset_storage()

    def reset_storage(self) -> None:
        """Give every table page back to the OS once nothing is live."""
        self.free.clear()
        used = self.high_water
        self.high_water = 0
        if used:
            region = self._regions[0]
            region.madvise(mmap.MADV_DONTNEED, 0, used * SPTE_ENT_PER_PAGE * 8)

    # --- addresses ----------------------------------------------------------

    def pa(self, slot: int) -> int:
        return (TABLE_PFN_BASE + self.serial_view[slot]) << 12

    def pa_many(self, slots: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        return ((self.serial[slots] + TABLE_PFN_BASE) << 12).astype(np.uint64)

    def slot_of_pfn(self, pfn: int) -> int:
        return self.slot_of_serial_view[pfn - TABLE_PFN_BASE]

    def slots_of_pfns(self, pfns: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        serials = pfns.astype(np.int64) - TABLE_PFN_BASE
        return self.slot_of_serial[serials].astype(np.int64)

    def live_slots(self, tree: int | None = None) -> npt.NDArray[np.int64]:
        trees = self.tree[: self.high_water]
        mask = trees != TREE_FREE if tree is None else trees == tree
        return np.flatnonzero(mask).astype(np.int64)

    def committed_bytes(self) -> int:
        """Bytes of table storage touched so far (entries and metadata)."""
        per_table = SPTE_ENT_PER_PAGE * 8 + 1 + 8 + 8 + 1 + 1 + 1
        return self.high_water * per_table + self.next_serial * 4
