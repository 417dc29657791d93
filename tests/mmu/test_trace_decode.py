"""Annotating a handwritten kernel trace (ftrace text) with SPTE decodes."""

from __future__ import annotations

from pathlib import Path

from mmu.profiles import host_from_profile
from mmu.trace_decode import annotate, sptes_in
from mmu.vmtypes import VmType, VmView

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample-kvmmmu-trace.txt"


def test_every_line_passes_through_and_spte_lines_are_annotated() -> None:
    vm = VmView.for_type(host_from_profile("intel-ept"), VmType.DEFAULT)
    lines = SAMPLE.read_text().splitlines()
    out = list(annotate(lines, vm))
    originals = [line for line in out if not line.startswith("#kvmmu  ")]
    assert originals == lines  # nothing dropped, nothing changed
    notes = [line for line in out if line.startswith("#kvmmu  ")]
    # set_spte 1, spte_changed 2x2, check_mmio_spte 1, fast_page_fault 2, split 1
    assert len(notes) == 9
    assert any(
        "new_spte 0x86000014002b3b77: leaf, level 1, pfn 0x14002b3, (rwxu)" in n for n in notes
    )
    mmio = next(n for n in notes if n.startswith("#kvmmu  spte 0x00000000feb00016"))
    assert "mmio" in mmio and "gfn 0xfeb00" in mmio and "gen 0x2" in mmio
    assert "MMIO SPTE for MMIO value 0x6" in mmio


def test_mmio_verdict_depends_on_the_vm_value() -> None:
    host = host_from_profile("intel-tdx")
    td = VmView.for_type(host, VmType.TDX)
    vmx = VmView.for_type(host, VmType.DEFAULT)
    line = (
        "kvm-5 [000] ..... 1.0: kvm_tdp_mmu_spte_changed: as id 0 gfn feb00 level 1 "
        "old_spte 8000000000000000 new_spte feb00008"
    )
    td_note = list(annotate([line], td))[-1]
    vmx_note = list(annotate([line], vmx))[-1]
    assert "MMIO SPTE for MMIO value 0x0" in td_note and "mmio" in td_note
    assert "not an MMIO SPTE for MMIO value 0x6" in vmx_note


def test_lines_that_are_not_kvmmmu_spte_events_yield_nothing() -> None:
    assert sptes_in("kvm_exit: reason EPT_VIOLATION rip 0x0 info 182 0") == []
    assert sptes_in("mark_mmio_spte: sptep:00000000a1b2c3d4 gfn feb00 access 0 gen 2") == []
    assert sptes_in("random text with spte 1234") == []
    found = sptes_in("x: kvm_mmu_split_huge_page: gfn 2600 spte 8600001642600bf3 level 2 errno 0")
    assert [(f.value, f.level) for f in found] == [(0x8600001642600BF3, 2)]
