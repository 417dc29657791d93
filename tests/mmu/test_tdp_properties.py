"""Invariants of the TDP MMU on random fault sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mmu import tdp_mmu
from mmu.constants import PFERR_FETCH_MASK, PFERR_USER_MASK, PFERR_WRITE_MASK
from mmu.events import OpContext
from mmu.fault import Outcome
from mmu.pool import TREE_DIRECT
from mmu.vm import Vm
from mmu.vmtypes import VmType
from tests.mmu.vmfactory import slot, vm_with

CODES = [PFERR_WRITE_MASK, PFERR_USER_MASK, PFERR_USER_MASK | PFERR_FETCH_MASK]


@st.composite
def workload(draw: st.DrawFn) -> tuple[str, list[tuple[int, int]]]:
    profile = draw(st.sampled_from(["intel-ept", "intel-ept-noad", "intel-l1tf", "amd-sev-snp"]))
    n = draw(st.integers(1, 120))
    gfns = draw(st.lists(st.integers(0x100, 0x2400), min_size=n, max_size=n))
    codes = draw(st.lists(st.sampled_from(CODES), min_size=n, max_size=n))
    return profile, list(zip(gfns, codes, strict=True))


def build(profile: str) -> Vm:
    return vm_with(
        profile,
        VmType.DEFAULT,
        slot(0, 0x200, 0x600, backing_level=2),
        slot(1, 0x1000, 0x800, backing_level=3),
        slot(2, 0x2000, 0x100),
    )


def leaves(vm: Vm) -> list[tuple[int, int, int]]:
    dump = vm.dump(only_present=True)
    return list(zip(dump.gfns.tolist(), dump.levels.tolist(), dump.values.tolist(), strict=True))


@settings(max_examples=60, deadline=None)
@given(workload())
def test_zap_then_fault_reproduces_the_same_sptes(case: tuple[str, list[tuple[int, int]]]) -> None:
    """Without NX huge pages: a split leaves 512 leaves that one fault does not rebuild."""
    profile, faults = case
    if profile == "intel-l1tf":
        profile = "intel-ept"
    vm = build(profile)
    for gfn, code in faults:
        vm.fault(gfn << 12, code)
    first = leaves(vm)
    zapped = vm.zap_gfn_range(0, 1 << 30)
    assert zapped.spte_changes == len(first)
    assert vm.dump(only_present=True).values.size == 0
    for gfn, code in faults:
        vm.fault(gfn << 12, code)
    assert leaves(vm) == first


@settings(max_examples=60, deadline=None)
@given(workload())
def test_dump_equals_the_sptes_the_faults_installed(
    case: tuple[str, list[tuple[int, int]]],
) -> None:
    profile, faults = case
    vm = build(profile)
    installed: dict[tuple[int, int], int] = {}
    for gfn, code in faults:
        res = vm.fault(gfn << 12, code)
        for event in res.events:  # every leaf write the fault made, splits included
            if event[0] == "kvm_tdp_mmu_spte_changed":
                _, _, egfn, level, _, new = event
                if new & (1 << 11) and (level == 1 or new & 0x80):
                    installed[(egfn, level)] = new
                else:
                    installed.pop((egfn, level), None)
            elif event[0] == "kvm_mmu_split_huge_page":
                _, egfn, _huge, level, _ = event
                installed.pop((egfn, level), None)
                step = 1 << (9 * (level - 2))
                for i in range(512):
                    installed[(egfn + i * step, level - 1)] = -1  # filled from the dump below
        assert res.outcome in (Outcome.FIXED, Outcome.SPURIOUS, Outcome.EMULATE)
    got = {(g, lv): v for g, lv, v in leaves(vm)}
    assert set(got) == set(installed)
    assert all(installed[k] in (-1, got[k]) for k in got)
    stats = vm.stats()
    assert stats["pages_4k"] + stats["pages_2m"] + stats["pages_1g"] == len(got)


@settings(max_examples=40, deadline=None)
@given(workload())
def test_counted_root_zap_equals_the_four_passes(case: tuple[str, list[tuple[int, int]]]) -> None:
    profile, faults = case
    counted, walked = build(profile), build(profile)
    for vm in (counted, walked):
        for gfn, code in faults:
            vm.fault(gfn << 12, code)
    quiet, loud = OpContext(), OpContext(events=True)
    tdp_mmu.zap_root(counted.state, quiet, TREE_DIRECT)
    tdp_mmu.zap_root(walked.state, loud, TREE_DIRECT)
    assert quiet.spte_changes == loud.spte_changes
    assert counted.stats() == walked.stats() and counted.tables() == walked.tables()
