"""--explain names the reason each decision went the way it did."""

from __future__ import annotations

from mmu.constants import (
    PFERR_PRESENT_MASK,
    PFERR_RSVD_MASK,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
)
from mmu.vmtypes import VmType
from tests.mmu.vmfactory import slot, vm_with


def fast_path_step(profile: str, code: int, *, mapped_first: bool = False) -> str:
    vm = vm_with(profile, VmType.DEFAULT, slot(0, 0x100, 0x10))
    if mapped_first:
        vm.fault(0x100000, PFERR_USER_MASK)  # a read maps the page
    explain = vm.fault(0x100000, code, explain=True).explain
    assert explain is not None
    steps = [s for s in explain if s.function == "page_fault_can_be_fast"]
    return steps[0].text if steps else "attempted"


def test_why_the_fast_path_was_not_tried() -> None:
    assert fast_path_step("intel-ept", PFERR_WRITE_MASK).endswith(
        "a not-present fault, and the host has A/D bits (nothing to restore)"
    )
    read_on_present = fast_path_step("intel-ept", PFERR_PRESENT_MASK | PFERR_USER_MASK)
    assert read_on_present.endswith("a present fault that is not a write")
    assert fast_path_step("intel-ept-noad", PFERR_WRITE_MASK) == "attempted"
    write_on_present = PFERR_PRESENT_MASK | PFERR_WRITE_MASK
    assert fast_path_step("intel-ept", write_on_present, mapped_first=True) == "attempted"


def test_a_stale_mmio_spte_fault_skips_the_fast_path_as_rsvd() -> None:
    vm = vm_with("intel-ept", VmType.DEFAULT, slot(0, 0x100, 0x10))
    vm.fault(0xFEE00000, PFERR_USER_MASK)  # an MMIO SPTE of generation 0x2
    vm.create_memslot(slot(1, 0x200, 0x10))  # generation 0x4: the SPTE is stale
    explain = vm.fault(0xFEE00000, PFERR_RSVD_MASK, explain=True).explain
    assert explain is not None
    texts = {s.function: s.text for s in explain}
    assert texts["page_fault_can_be_fast"] == "no fast path: an RSVD fault"
