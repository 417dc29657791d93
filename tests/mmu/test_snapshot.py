"""A restored VM is indistinguishable from the original, now and after more operations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmu.constants import (
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    PFERR_PRIVATE_ACCESS,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
)
from mmu.errors import InvalidInput
from mmu.snapshot import restore_vm, snapshot_vm
from mmu.vm import Vm
from mmu.vmtypes import VmType
from tests.mmu.vmfactory import host, slot, vm_with


def fingerprint(vm: Vm) -> tuple[object, ...]:
    d = vm.dump(include_nonleaf=True)
    return (
        d.trees.tolist(),
        d.gfns.tolist(),
        d.levels.tolist(),
        d.values.tolist(),
        vm.stats(),
        vm.tables(),
        vm.generation,
        vm.memslots(),
        vm.shadow_mmio_value,
    )


def ops(vm: Vm, gfns: list[int]) -> list[object]:
    out: list[object] = []
    for i, gfn in enumerate(gfns):
        code = PFERR_WRITE_MASK if i % 3 else PFERR_USER_MASK
        r = vm.fault(gfn << 12, code)
        out.append((r.outcome, r.spte, r.level))
        if i % 17 == 5:
            out.append(vm.zap_gfn_range(gfn - 8, gfn + 8).spte_changes)
        if i % 29 == 7:
            out.append(vm.zap_all_fast().spte_changes)
    out.append(vm.get_dirty_log(1).dirty)
    return out


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(0x100, 0x1400), min_size=1, max_size=80),
    st.lists(st.integers(0x100, 0x1400), min_size=1, max_size=80),
)
def test_restore_then_continue_matches(before: list[int], after: list[int]) -> None:
    vm = vm_with(
        "intel-l1tf",
        VmType.DEFAULT,
        slot(0, 0x200, 0x600, backing_level=2),
        slot(1, 0x1000, 0x200, flags=KVM_MEM_LOG_DIRTY_PAGES),
    )
    ops(vm, before)
    copy = restore_vm(vm.host, snapshot_vm(vm))
    assert fingerprint(copy) == fingerprint(vm)
    assert ops(copy, after) == ops(vm, after)
    assert fingerprint(copy) == fingerprint(vm)


def test_tdx_vm_with_private_memory_round_trips() -> None:
    td = vm_with(
        "intel-tdx",
        VmType.TDX,
        slot(0, 0x4000, 0x400, flags=KVM_MEM_GUEST_MEMFD, gmem_pfn_base=0x9000),
    )
    td.set_memory_attributes(0x4000, 0x4100, private=True)
    for gfn in range(0x4000, 0x4100, 7):
        td.fault(gfn << 12, PFERR_WRITE_MASK | PFERR_PRIVATE_ACCESS)
    td.fault((0x4200 << 12) | (1 << 51), PFERR_WRITE_MASK)
    copy = restore_vm(td.host, snapshot_vm(td))
    assert fingerprint(copy) == fingerprint(td)
    assert copy.state.attributes.intervals() == [(0x4000, 0x4100)]
    nxt = np.uint64(0x4101 << 12) | np.uint64(1 << 51)
    assert copy.fault(int(nxt), PFERR_WRITE_MASK).spte == td.fault(int(nxt), PFERR_WRITE_MASK).spte


def test_snapshot_refuses_another_host() -> None:
    vm = vm_with("intel-ept", VmType.DEFAULT, slot(0, 0x100, 0x10))
    with pytest.raises(InvalidInput):
        restore_vm(host("amd-npt"), snapshot_vm(vm))
    with pytest.raises(Exception):  # noqa: B017 - any loader error: not a snapshot at all
        restore_vm(vm.host, b"not a snapshot")
