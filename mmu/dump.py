"""Every SPTE of a VM as numpy arrays (root, gfn, level, value), vectorised over tables.

Ordered like the vectors' final state: direct root first, then by GFN and
level. GFNs are the first GFN an entry maps, stripped of the TDX shared bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mmu.constants import (
    PG_LEVEL_4K,
    PT_PAGE_SIZE_MASK,
    SHADOW_NONPRESENT_VALUE,
    SPTE_ENT_PER_PAGE,
    SPTE_MMU_PRESENT_MASK,
)
from mmu.pool import TREE_DIRECT, TREE_MIRROR
from mmu.state import VmState

ROOT_NAMES = {TREE_DIRECT: "direct", TREE_MIRROR: "mirror"}


@dataclass(frozen=True, slots=True)
class SpteArrays:
    trees: npt.NDArray[np.int8]  # TREE_DIRECT / TREE_MIRROR
    gfns: npt.NDArray[np.uint64]
    levels: npt.NDArray[np.int8]
    values: npt.NDArray[np.uint64]

    def __len__(self) -> int:
        return len(self.values)

    def rows(self) -> Iterator[tuple[str, int, int, int]]:
        for tree, gfn, level, value in zip(
            self.trees.tolist(),
            self.gfns.tolist(),
            self.levels.tolist(),
            self.values.tolist(),
            strict=True,
        ):
            yield ROOT_NAMES[tree], gfn, level, value

    def slice(self, lo: int, hi: int) -> SpteArrays:
        return SpteArrays(
            self.trees[lo:hi], self.gfns[lo:hi], self.levels[lo:hi], self.values[lo:hi]
        )


_EMPTY = SpteArrays(
    np.zeros(0, np.int8), np.zeros(0, np.uint64), np.zeros(0, np.int8), np.zeros(0, np.uint64)
)


def dump_arrays(
    state: VmState,
    *,
    start: int = 0,
    end: int | None = None,
    level: int | None = None,
    only_present: bool = False,
    include_nonleaf: bool = False,
    tree: int | None = None,
) -> SpteArrays:
    """Entries that are not SHADOW_NONPRESENT_VALUE (non-leaf pointers only on request)."""
    trees = (TREE_DIRECT, TREE_MIRROR) if tree is None else (tree,)
    parts = [
        p
        for t in trees
        for p in _tree_parts(state, t, start, end, level, only_present, include_nonleaf)
    ]
    if not parts:
        return _EMPTY
    return SpteArrays(
        np.concatenate([p.trees for p in parts]),
        np.concatenate([p.gfns for p in parts]),
        np.concatenate([p.levels for p in parts]),
        np.concatenate([p.values for p in parts]),
    )


def _tree_parts(
    state: VmState,
    tree: int,
    start: int,
    end: int | None,
    level: int | None,
    only_present: bool,
    include_nonleaf: bool,
) -> list[SpteArrays]:
    """One tree's entries sorted by (gfn, level).

    Within a level, tables sorted by their first GFN give entries in GFN order;
    the per-level runs are then merged with a stable sort, which finds the
    runs instead of sorting every entry from scratch.
    """
    pool = state.pool
    slots = pool.live_slots(tree)
    if len(slots) == 0:
        return []
    levels_of = pool.level[slots]
    runs: list[SpteArrays] = []
    for table_level in sorted(set(levels_of.tolist())):
        if level is not None and table_level != level:
            continue
        sel = slots[levels_of == table_level]
        sel = sel[np.argsort(pool.gfn[sel], kind="stable")]
        rows = pool.entries[sel]
        keep = rows != np.uint64(SHADOW_NONPRESENT_VALUE)
        present = (rows & np.uint64(SPTE_MMU_PRESENT_MASK)) != 0
        if table_level > PG_LEVEL_4K and not include_nonleaf:
            keep &= ~present | ((rows & np.uint64(PT_PAGE_SIZE_MASK)) != 0)
        if only_present:
            keep &= present
        table_idx, entry_idx = np.nonzero(keep)
        if len(table_idx) == 0:
            continue
        span = np.uint64(1 << (9 * (table_level - 1)))
        gfns = pool.gfn[sel][table_idx] + entry_idx.astype(np.uint64) * span
        if state.gfn_direct_bits and tree == TREE_DIRECT:
            gfns &= ~np.uint64(state.gfn_direct_bits)
        in_range = gfns + span > np.uint64(start)
        if end is not None:
            in_range &= gfns < np.uint64(end)
        count = int(in_range.sum())
        runs.append(
            SpteArrays(
                np.full(count, tree, dtype=np.int8),
                gfns[in_range],
                np.full(count, table_level, dtype=np.int8),
                rows[table_idx, entry_idx][in_range],
            )
        )
    if len(runs) <= 1:
        return runs
    merged = SpteArrays(
        np.concatenate([r.trees for r in runs]),
        np.concatenate([r.gfns for r in runs]),
        np.concatenate([r.levels for r in runs]),
        np.concatenate([r.values for r in runs]),
    )
    # Runs are concatenated by ascending level, so a stable sort on GFN orders
    # equal GFNs by level.
    order = np.argsort(merged.gfns, kind="stable")
    return [
        SpteArrays(
            merged.trees[order], merged.gfns[order], merged.levels[order], merged.values[order]
        )
    ]


def count_tables(state: VmState) -> dict[str, int]:
    trees = state.pool.tree[: state.pool.high_water]
    return {
        "direct": int((trees == TREE_DIRECT).sum()),
        "mirror": int((trees == TREE_MIRROR).sum()),
    }


def fnv1a64(text: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in text:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


__all__ = ["SPTE_ENT_PER_PAGE", "SpteArrays", "count_tables", "dump_arrays", "fnv1a64"]
