"""Trace text of the page-table events in the kernel's layout, so trace parsers read it."""

from __future__ import annotations

from mmu.constants import PFERR_WRITE_MASK
from mmu.snapshot import restore_vm, snapshot_vm
from mmu.trace import format_event
from mmu.vmtypes import VmType
from tests.mmu.vmfactory import host, slot, vm_with


def texts(vm: object, name: str) -> list[str]:
    events = [event for _, event in vm.event_log if event[0] == name]  # type: ignore[attr-defined]
    return [format_event(vm.host, event) for event in events]  # type: ignore[attr-defined]


def test_get_page_prints_the_kernel_page_dump() -> None:
    vm = vm_with("intel-ept", VmType.DEFAULT, slot(0, 0x40100, 0x100), tracing=True)
    vm.fault(0x40100000, PFERR_WRITE_MASK)
    assert texts(vm, "kvm_mmu_get_page") == [  # sp->gfn: the lowest GFN a table maps
        f"sp gen 0 gfn {gfn:x} l{level} 8-byte q0 direct wux nxe ad root 0 sync new"
        for gfn, level in ((0, 4), (0, 3), (0x40000, 2), (0x40000, 1))
    ]
    noad = vm_with("intel-ept-noad", VmType.DEFAULT, slot(0, 0x100, 0x100), tracing=True)
    noad.fault(0x100000, PFERR_WRITE_MASK)
    assert texts(noad, "kvm_mmu_get_page")[0] == (
        "sp gen 0 gfn 0 l4 8-byte q0 direct wux nxe !ad root 0 sync new"
    )


def test_zap_all_fast_prints_the_valid_gen_it_toggles() -> None:
    vm = vm_with("intel-ept", VmType.DEFAULT, slot(0, 0x100, 0x100), tracing=True)
    for _ in range(3):
        vm.fault(0x100000, PFERR_WRITE_MASK)
        vm.zap_all_fast()
    assert texts(vm, "kvm_mmu_zap_all_fast") == [
        "kvm-mmu-valid-gen 0 used_pages 0",
        "kvm-mmu-valid-gen 1 used_pages 0",
        "kvm-mmu-valid-gen 0 used_pages 0",
    ]
    restored = restore_vm(host("intel-ept"), snapshot_vm(vm))
    assert restored.state.mmu_valid_gen == vm.state.mmu_valid_gen == 1
