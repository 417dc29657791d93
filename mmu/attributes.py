"""Per-GFN memory attributes (KVM_SET_MEMORY_ATTRIBUTES): only PRIVATE exists on x86.

Stored as sorted, disjoint, half-open GFN intervals that are private.
"""

from __future__ import annotations

import bisect


class PrivateRanges:
    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def intervals(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def is_private(self, gfn: int) -> bool:
        i = bisect.bisect_right(self._starts, gfn) - 1
        return i >= 0 and gfn < self._ends[i]

    def private_count(self, start: int, end: int) -> int:
        """How many GFNs of [start, end) are private."""
        total = 0
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while i < len(self._starts) and self._starts[i] < end:
            lo, hi = max(self._starts[i], start), min(self._ends[i], end)
            if hi > lo:
                total += hi - lo
            i += 1
        return total

    def all_have(self, start: int, end: int, private: bool) -> bool:
        count = self.private_count(start, end)
        return count == (end - start) if private else count == 0

    def uniform(self, start: int, end: int) -> bool:
        count = self.private_count(start, end)
        return count in (0, end - start)

    def set(self, start: int, end: int, private: bool) -> None:
        merged: list[tuple[int, int]] = []
        for lo, hi in self.intervals():
            if hi <= start or lo >= end:
                merged.append((lo, hi))
                continue
            if lo < start:
                merged.append((lo, start))
            if hi > end:
                merged.append((end, hi))
        if private:
            merged.append((start, end))
        merged.sort()
        out: list[tuple[int, int]] = []
        for lo, hi in merged:
            if out and lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        self._starts = [lo for lo, _ in out]
        self._ends = [hi for _, hi in out]
