"""The batch fault path gives exactly the results of faulting one by one, in order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mmu.constants import (
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    PFERR_FETCH_MASK,
    PFERR_PRESENT_MASK,
    PFERR_RSVD_MASK,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
)
from mmu.fault import Outcome
from mmu.fault_batch import OUTCOME_CODES
from mmu.vm import Vm
from mmu.vmtypes import VmType
from tests.mmu.vmfactory import slot, vm_with

PROFILES = ["intel-ept", "intel-ept-noad", "intel-l1tf", "amd-npt", "amd-sev-snp", "intel-tdx"]
ERROR_CODES = [
    PFERR_WRITE_MASK,
    PFERR_USER_MASK,
    PFERR_FETCH_MASK | PFERR_USER_MASK,
    PFERR_WRITE_MASK | PFERR_PRESENT_MASK,
    PFERR_PRESENT_MASK | PFERR_USER_MASK,
    PFERR_RSVD_MASK,
    PFERR_RSVD_MASK | PFERR_PRESENT_MASK,
]


def build(profile: str, tdx: bool, layout: list[tuple[int, int, int, int]]) -> Vm:
    slots = [
        slot(i, base, npages, flags=flags, backing_level=backing)
        for i, (base, npages, flags, backing) in enumerate(layout)
    ]
    vm_type = VmType.TDX if tdx else VmType.DEFAULT
    return vm_with(profile, vm_type, *slots)


def state_of(vm: Vm) -> tuple[object, ...]:
    dump = vm.dump(include_nonleaf=True)
    cache = vm.state.mmio_cache
    bitmaps = [
        None if s.dirty_bitmap is None else s.dirty_bitmap.tolist()
        for s in vm.state.memslots.states()
    ]
    return (
        dump.trees.tolist(),
        dump.gfns.tolist(),
        dump.levels.tolist(),
        dump.values.tolist(),
        vm.stats(),
        vm.tables(),
        None if cache is None else (cache.gfn, cache.access, cache.generation),
        bitmaps,
    )


@st.composite
def scenario(
    draw: st.DrawFn,
) -> tuple[str, bool, list[tuple[int, int, int, int]], list[int], list[int]]:
    profile = draw(st.sampled_from(PROFILES))
    tdx = profile == "intel-tdx" and draw(st.booleans())
    layout = []
    base = 0x100
    for _ in range(draw(st.integers(1, 3))):
        base += draw(st.integers(0, 4)) * 512 + draw(st.sampled_from([0, 0, 7, 300]))
        npages = draw(st.sampled_from([1, 64, 512, 1024, 1536, 4096])) + draw(
            st.sampled_from([0, 0, 3])
        )
        flags = draw(st.sampled_from([0, 0, 0, KVM_MEM_READONLY, KVM_MEM_LOG_DIRTY_PAGES]))
        if tdx and flags == KVM_MEM_READONLY:
            flags = 0
        backing = draw(st.sampled_from([1, 2, 2, 3]))
        layout.append((base, npages, flags, backing))
        base += npages
    hi = base + 1024
    shared = (1 << 39) if tdx else 0
    n = draw(st.integers(1, 300))
    gfns = draw(st.lists(st.integers(0x80, hi), min_size=n, max_size=n))
    if draw(st.booleans()):
        gfns.sort()
    gpas = [((g | shared) << 12) | draw(st.integers(0, 4095)) for g in gfns]
    codes = draw(st.lists(st.sampled_from(ERROR_CODES), min_size=n, max_size=n))
    if draw(st.booleans()):
        codes = [PFERR_WRITE_MASK] * n  # the common case, mostly vectorised
    return profile, tdx, layout, gpas, codes


@settings(max_examples=120, deadline=None)
@given(case=scenario(), warmup=st.integers(0, 40))
def test_batch_equals_sequential(
    case: tuple[str, bool, list[tuple[int, int, int, int]], list[int], list[int]], warmup: int
) -> None:
    profile, tdx, layout, gpas, codes = case
    one, many = build(profile, tdx, layout), build(profile, tdx, layout)
    for vm in (one, many):  # some prior state: a prefix faulted one by one
        for gpa, code in zip(gpas[:warmup], codes[:warmup], strict=False):
            vm.fault(gpa, code)
    expected = []
    for gpa, code in zip(gpas, codes, strict=True):
        res = one.fault(gpa, code, events=False)
        expected.append((OUTCOME_CODES[res.outcome], res.spte or 0, res.level or 0, res.gfn))
    got = many.fault_batch(np.array(gpas, dtype=np.uint64), np.array(codes, dtype=np.uint64))
    assert [
        (int(o), int(s), int(lv), int(g))
        for o, s, lv, g in zip(got.outcomes, got.sptes, got.levels, got.gfns, strict=True)
    ] == expected
    assert state_of(many) == state_of(one)


def test_large_sorted_batch_is_vectorised_and_equal() -> None:
    layout = [(0x40000, 1 << 16, 0, 1), (0x60000, 1 << 14, 0, 2)]
    one, many = build("intel-ept", False, layout), build("intel-ept", False, layout)
    gfns = np.concatenate([np.arange(0x40000, 0x50000), np.arange(0x60000, 0x64000, 512) + 7])
    gpas = gfns.astype(np.uint64) << np.uint64(12)
    got = many.fault_batch(gpas, PFERR_WRITE_MASK)
    for gpa in gpas.tolist():
        one.fault(gpa, PFERR_WRITE_MASK, events=False)
    assert got.vectorised > 0.99 * len(gpas)
    assert state_of(many) == state_of(one)


def test_refaults_between_fresh_runs_keep_the_fresh_runs_vectorised() -> None:
    # Blocks of 1,000 already-mapped GFNs alternate with blocks of fresh ones: the
    # re-faults are taken one by one, the fresh blocks still in vector runs.
    layout = [(0x40000, 1 << 16, 0, 1)]
    one, many = build("intel-ept", False, layout), build("intel-ept", False, layout)
    gfns = np.arange(0x40000, 0x40000 + 16_000, dtype=np.uint64)
    mapped = gfns[(gfns // np.uint64(1000)) % np.uint64(2) == 0]
    for vm in (one, many):
        vm.fault_batch(mapped << np.uint64(12), PFERR_WRITE_MASK)
    gpas = gfns << np.uint64(12)
    got = many.fault_batch(gpas, PFERR_WRITE_MASK)
    for gpa in gpas.tolist():
        one.fault(gpa, PFERR_WRITE_MASK, events=False)
    spurious = got.outcomes == OUTCOME_CODES[Outcome.SPURIOUS]
    assert int(spurious.sum()) == len(mapped)
    assert got.vectorised >= len(gfns) - len(mapped) - 1_000
    assert state_of(many) == state_of(one)
