"""SPTE-layer speed: batch (numpy) and single-value paths.

Prints a readable summary and, as its last line, one JSON object.
Baselines measured in the same run: a bare numpy OR over the same array
(the floor for any vectorised pass) and an empty Python call (the floor
for any single-value function).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import emit, human, median_seconds, rate
from mmu import batch, mmio, spte
from mmu.profiles import host_from_profile
from mmu.vmtypes import VmType, VmView

N = 1 << 20
SINGLE = 200_000


def main() -> None:
    host = host_from_profile("intel-l1tf")
    vm = VmView.for_type(host, VmType.DEFAULT)
    rng = np.random.default_rng(1)
    pfns = rng.integers(0, 1 << 30, N, dtype=np.uint64)
    gfns = rng.integers(0, 1 << 30, N, dtype=np.uint64)
    mixed = np.concatenate(
        [
            batch.make_spte_batch(host, level=1, pte_access=7, pfns=pfns[: N // 2])[0],
            batch.make_mmio_spte_batch(vm, gfns[: N // 4], 7, 0x42),
            np.full(N - N // 2 - N // 4, 1 << 63, dtype=np.uint64),
        ]
    )

    t_floor = median_seconds(lambda: pfns | np.uint64(0x800))
    t_leaf = median_seconds(
        lambda: batch.make_spte_batch(host, level=1, pte_access=7, pfns=pfns, mt_bits=0x70)
    )
    t_mmio = median_seconds(lambda: batch.make_mmio_spte_batch(vm, gfns, 7, 0x1234))
    t_class = median_seconds(lambda: batch.classify_sptes(vm, mixed))

    pfn_list = [int(p) for p in pfns[:SINGLE]]
    gfn_list = [int(g) for g in gfns[:SINGLE]]
    values = [int(v) for v in mixed[:SINGLE]]

    def noop(x: int) -> int:
        return x

    def single(fn: object) -> float:
        return rate(SINGLE, median_seconds(fn, repeat=5))  # type: ignore[arg-type]

    r_noop = single(lambda: [noop(p) for p in pfn_list])
    r_leaf = single(
        lambda: [spte.make_spte(host, level=1, pte_access=7, pfn=p, mt_bits=0x70) for p in pfn_list]
    )
    r_mmio = single(lambda: [mmio.make_mmio_spte(vm, g, 7, 0x1234) for g in gfn_list])
    r_class = single(
        lambda: [mmio.is_mmio_spte(vm, v) or spte.is_shadow_present_pte(v) for v in values]
    )
    figures = {
        "n": N,
        "batch_floor_or_per_s": rate(N, t_floor),
        "batch_make_spte_per_s": rate(N, t_leaf),
        "batch_make_mmio_spte_per_s": rate(N, t_mmio),
        "batch_classify_per_s": rate(N, t_class),
        "single_noop_call_per_s": r_noop,
        "single_make_spte_per_s": r_leaf,
        "single_make_mmio_spte_per_s": r_mmio,
        "single_classify_per_s": r_class,
    }
    print(f"SPTE layer, {N:,} values per batch, medians of 7 runs (host intel-l1tf)")
    print(f"  batch floor (one numpy OR)   {human(figures['batch_floor_or_per_s'])}/s")
    for key in ("make_spte", "make_mmio_spte", "classify"):
        print(f"  batch {key:<22} {human(figures[f'batch_{key}_per_s'])}/s")
    print(f"  single floor (empty call)    {human(r_noop)}/s")
    for key in ("make_spte", "make_mmio_spte", "classify"):
        print(f"  single {key:<21} {human(figures[f'single_{key}_per_s'])}/s")
    emit(figures)


if __name__ == "__main__":
    main()
