"""Scenarios a KVM developer checks, told to the model through the public Vm API."""

from __future__ import annotations

import pytest

from mmu.constants import (
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    PFERR_FETCH_MASK,
    PFERR_PRESENT_MASK,
    PFERR_PRIVATE_ACCESS,
    PFERR_RSVD_MASK,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
    SHADOW_NONPRESENT_VALUE,
)
from mmu.decode import SpteKind, decode_spte
from mmu.errors import Conflict, InvalidInput, Refused
from mmu.fault import Outcome
from mmu.mmio import get_mmio_spte_generation, is_mmio_spte
from mmu.spte import spte_to_pfn
from mmu.vm import Vm
from mmu.vmtypes import VmType, VmView
from tests.mmu.vmfactory import host, slot, vm_with

READ = PFERR_USER_MASK
WRITE = PFERR_WRITE_MASK
MISCONFIG = PFERR_RSVD_MASK  # what an EPT misconfiguration exit passes


def view(vm: Vm) -> VmView:
    return VmView(host=vm.host, shadow_mmio_value=vm.shadow_mmio_value, vm_type=vm.vm_type)


def test_vmx_and_tdx_vms_build_different_mmio_sptes_for_the_same_gpa() -> None:
    vmx = vm_with("intel-tdx", VmType.DEFAULT, slot(0, 0x100, 0x100))
    td = vm_with("intel-tdx", VmType.TDX, slot(0, 0x100, 0x100))
    shared = 1 << 51  # GPAW 52: the TD's shared bit
    gpa = 0x900000
    a = vmx.fault(gpa, READ)
    b = td.fault(gpa | shared, READ | PFERR_PRESENT_MASK * 0)
    assert a.outcome == b.outcome == Outcome.EMULATE
    assert a.spte is not None and b.spte is not None and a.spte != b.spte
    assert a.spte & 0x7 == 0x6  # W+X without R: EPT misconfig for the VMX VM
    assert b.spte & 0x8000000000000007 == 0  # RWX=0, SVE clear: #VE for the TD
    assert b.gfn == gpa >> 12  # the TD's SPTE is built from the stripped GFN
    assert is_mmio_spte(view(vmx), a.spte) and not is_mmio_spte(view(vmx), b.spte)
    assert is_mmio_spte(view(td), b.spte) and not is_mmio_spte(view(td), a.spte)
    assert decode_spte(view(td), b.spte).kind == SpteKind.MMIO
    assert decode_spte(view(vmx), b.spte).kind == SpteKind.NON_PRESENT


def test_private_tdx_fault_without_a_memslot_exits_to_userspace() -> None:
    td = vm_with("intel-tdx", VmType.TDX)
    td.set_memory_attributes(0x900, 0x901, private=True)
    res = td.fault(0x900000, WRITE | PFERR_PRIVATE_ACCESS)
    assert res.outcome == Outcome.EFAULT
    assert res.memory_fault is not None and res.memory_fault.gpa == 0x900000
    assert res.memory_fault.flags == 8  # KVM_MEMORY_EXIT_FLAG_PRIVATE
    assert td.stats()["pf_mmio_spte_created"] == 0


def test_memslot_change_makes_cached_mmio_spte_stale() -> None:
    vm = vm_with("intel-ept", VmType.DEFAULT, slot(0, 0x100, 0x100))
    first = vm.fault(0x900000, READ)
    assert first.outcome == Outcome.EMULATE and first.spte is not None
    gen0 = get_mmio_spte_generation(vm.host.layout, first.spte)
    assert gen0 == vm.generation
    vm.create_memslot(slot(1, 0x400, 0x10))  # bumps the memslot generation
    again = vm.fault(0x900000, MISCONFIG)
    assert again.mmio_check == Outcome.INVALID  # stale: take the normal path
    assert again.outcome == Outcome.EMULATE and again.spte is not None
    assert get_mmio_spte_generation(vm.host.layout, again.spte) == vm.generation != gen0
    events = [e[0] for e in again.events]
    assert events[:1] == ["check_mmio_spte"] and "mark_mmio_spte" in events
    third = vm.fault(0x900000, MISCONFIG)  # now current: emulate via the MMIO cache
    assert third.outcome == Outcome.EMULATE and third.mmio_cache_hit
    assert vm.stats()["pf_mmio_spte_created"] == 2


def test_mmio_caching_disabled_emulates_every_time() -> None:
    vm = Vm(host("intel-ept", mmio_caching=False))
    for _ in range(3):
        res = vm.fault(0x900000, READ)
        assert res.outcome == Outcome.EMULATE and res.spte is None
    assert vm.stats()["pf_mmio_spte_created"] == 0 and vm.stats()["pf_emulate"] == 3
    with pytest.raises(Refused, match="MMIO caching"):
        Vm(host("intel-tdx", mmio_caching=False), VmType.TDX)


def test_sev_es_needs_mmio_caching() -> None:
    assert Vm(host("amd-sev-snp"), VmType.SEV_ES).vm_type == VmType.SEV_ES
    with pytest.raises(Refused, match="MMIO caching") as err:
        Vm(host("amd-sev-snp", mmio_caching=False), VmType.SEV_ES)
    assert err.value.field == "vm_type"
    Vm(host("amd-sev-snp", mmio_caching=False), VmType.SEV)  # plain SEV does not


def test_td_private_memory_maps_4k_only() -> None:
    gmem = slot(
        0, 0x40000, 0x400, flags=KVM_MEM_GUEST_MEMFD, backing_level=2, gmem_pfn_base=0x80000
    )
    td = vm_with("intel-tdx", VmType.TDX, gmem)
    td.set_memory_attributes(0x40000, 0x40400, private=True)
    for gfn in range(0x40000, 0x40400, 0x37):
        res = td.fault(gfn << 12, WRITE | PFERR_PRIVATE_ACCESS)
        assert res.outcome == Outcome.FIXED and res.root == "mirror" and res.level == 1
    dump = td.dump(root="mirror")
    assert set(dump.levels.tolist()) == {1}
    shared = td.fault(((0x40000 + 0x200) << 12) | (1 << 51), WRITE)
    assert shared.outcome == Outcome.EFAULT  # the GFN is private: convert it first
    td.set_memory_attributes(0x40200, 0x40400, private=False)
    shared = td.fault(((0x40000 + 0x200) << 12) | (1 << 51), WRITE)
    assert shared.outcome == Outcome.FIXED and shared.root == "direct" and shared.level == 2


def test_td_fault_on_a_private_gpa_is_private_whatever_the_error_code_says() -> None:
    # The TDX EPT-violation handler adds PFERR_PRIVATE_ACCESS for every GPA without
    # the shared bit; a "shared" fault must not map a huge page in the mirror tree.
    gmem = slot(
        0, 0x40000, 0x400, flags=KVM_MEM_GUEST_MEMFD, backing_level=2, gmem_pfn_base=0x80000
    )
    td = vm_with("intel-tdx", VmType.TDX, gmem)
    unconverted = td.fault(0x40000 << 12, WRITE)
    assert unconverted.outcome == Outcome.EFAULT and unconverted.private
    assert td.dump(root="mirror").values.tolist() == []
    td.set_memory_attributes(0x40000, 0x40400, private=True)
    res = td.fault(0x40000 << 12, WRITE)
    assert (res.outcome, res.root, res.level, res.private) == (Outcome.FIXED, "mirror", 1, True)


def test_td_fault_on_a_shared_gpa_is_shared_whatever_the_error_code_says() -> None:
    # PRIVATE_ACCESS is synthetic: for a TD only the GPA decides. A "private" code on
    # a shared GPA must not map a guest_memfd PFN in the direct (shared) tree.
    gmem = slot(0, 0x100, 0x100, flags=KVM_MEM_GUEST_MEMFD, gmem_pfn_base=0x9000)
    td = vm_with("intel-tdx", VmType.TDX, gmem)
    td.set_memory_attributes(0x100, 0x200, private=True)
    shared_bit = td.state.gfn_direct_bits
    res = td.fault(((0x105 | shared_bit) << 12), WRITE | PFERR_PRIVATE_ACCESS)
    assert not res.private and res.outcome == Outcome.EFAULT  # attribute says private
    assert td.dump(root="direct").values.tolist() == []
    td.set_memory_attributes(0x100, 0x200, private=False)
    res = td.fault(((0x105 | shared_bit) << 12), WRITE | PFERR_PRIVATE_ACCESS)
    assert (res.outcome, res.root, res.private) == (Outcome.FIXED, "direct", False)
    assert res.spte is not None and spte_to_pfn(td.state.host, res.spte) == 0x1000105


def test_td_walks_starting_at_the_shared_bit_warn_and_visit_nothing() -> None:
    # tdp_iter_start WARNs when the start GFN already holds the root's gfn_bits (8.2).
    td = vm_with("intel-tdx", VmType.TDX, slot(0, 0x100, 0x100))
    shared_bit = td.state.gfn_direct_bits
    mapped = td.fault(((0x105 | shared_bit) << 12), WRITE)
    assert mapped.outcome == Outcome.FIXED and mapped.warnings == []
    mmio = td.fault(((0xFEE00 | shared_bit) << 12), PFERR_RSVD_MASK)
    assert "tdp_iter_start_beyond_gfn_bits" in mmio.warnings
    zap = td.zap_gfn_range(shared_bit | 0x100, shared_bit | 0x200)
    assert zap.warnings == ("tdp_iter_start_beyond_gfn_bits",) and zap.spte_changes == 0
    assert td.zap_gfn_range(0x100, 0x200).warnings == ()
    # The stripped-GFN zap reached 0x105; the RSVD fault's MMIO SPTE (installed by the
    # normal path, as the walk found "SPTE" 0 with a stale generation) lies outside.
    assert td.dump(root="direct").gfns.tolist() == [0xFEE00]


def test_mbec_gmet_root_access_does_not_narrow_mmio_sptes() -> None:
    # 12.12(3) makes the root's access (0xB with GMET) make_spte's pte_access; an MMIO
    # SPTE and the vCPU MMIO cache still take ACC_ALL (8.6 step 2, 8.7.1).
    for batch in (False, True):
        vm = Vm(host("amd-npt", kernel_layout="mbec", npt_gmet=True))
        vm.create_memslot(slot(0, 0x100, 0x10))
        assert vm.state.root_access == 0xB
        gpas = [0xFEE00000, 0x100000]
        code = PFERR_USER_MASK | PFERR_WRITE_MASK
        if batch:
            got = vm.fault_batch(gpas, code)
            mmio_spte = int(got.sptes[0])
        else:
            mmio_spte = vm.fault(gpas[0], code).spte or 0
            vm.fault(gpas[1], code)
        assert mmio_spte & 0xF == 0x7  # (ACC_ALL & shadow_mmio_access_mask) | present
        cache = vm.state.mmio_cache
        assert cache is not None and cache.access == 0x6  # (W|U) & ACC_ALL, not & 0xB


def test_deleting_a_slot_zaps_its_sptes() -> None:
    for vm_type, quirk, zap in (
        (VmType.DEFAULT, True, "fast_zap_all"),
        (VmType.DEFAULT, False, "slot_range"),
        (VmType.SW_PROTECTED, True, "slot_range"),
    ):
        vm = vm_with(
            "intel-ept",
            vm_type,
            slot(0, 0x100, 0x100),
            slot(1, 0x300, 0x100),
            slot_zap_all_quirk=quirk,
        )
        for gfn in (0x120, 0x180, 0x320):
            assert vm.fault(gfn << 12, WRITE).outcome == Outcome.FIXED
        result = vm.delete_memslot(0)
        assert result.zap == zap and result.generation == vm.generation
        gfns = vm.dump().gfns.tolist()
        assert not any(0x100 <= g < 0x200 for g in gfns)
        assert (0x320 in gfns) == (zap == "slot_range")


def test_dirty_logging_reports_exactly_the_written_pages() -> None:
    vm = vm_with("intel-ept", VmType.DEFAULT, slot(0, 0x1000, 0x400, backing_level=2))
    assert vm.fault(0x1000 << 12, WRITE).level == 2  # a 2M mapping first
    vm.set_dirty_logging(0, True)  # eager split + write protect
    assert vm.stats()["pages_2m"] == 0 and vm.stats()["pages_4k"] == 512
    written = [0x1003, 0x1040, 0x11FF, 0x1300]
    for gfn in written:
        res = vm.fault(gfn << 12, WRITE | PFERR_PRESENT_MASK * (gfn < 0x1200))
        assert res.outcome == Outcome.FIXED and res.level == 1 and res.dirty_marked
    vm.fault(0x1005 << 12, READ)  # a read of a write-protected page dirties nothing
    log = vm.get_dirty_log(0)
    assert log.dirty == [g - 0x1000 for g in written]
    assert vm.get_dirty_log(0).dirty == []  # harvested and cleared
    # Harvesting write-protected the pages again: the next write is fixed by the fast path.
    res = vm.fault(0x1040 << 12, WRITE | PFERR_PRESENT_MASK)
    assert res.fast == Outcome.FIXED and vm.get_dirty_log(0).dirty == [0x40]
    vm.set_dirty_logging(0, False)  # huge pages are recovered
    assert vm.stats()["pages_2m"] >= 1


def test_nx_huge_pages_split_on_exec() -> None:
    vm = vm_with("intel-l1tf", VmType.DEFAULT, slot(0, 0x2000, 0x400, backing_level=2))
    huge = vm.fault(0x2000 << 12, READ)
    assert huge.level == 2 and not huge.spte & 0x4  # NX huge pages: not executable
    fetch = vm.fault(0x2001 << 12, READ | PFERR_FETCH_MASK | PFERR_PRESENT_MASK)
    assert fetch.level == 1 and fetch.spte is not None and fetch.spte & 0x4
    assert "kvm_mmu_split_huge_page" in [e[0] for e in fetch.events]
    assert vm.stats()["pages_2m"] == 0 and vm.stats()["pages_4k"] == 512


def test_read_only_slot() -> None:
    vm = vm_with("intel-ept", VmType.DEFAULT, slot(0, 0x100, 0x10, flags=KVM_MEM_READONLY))
    read = vm.fault(0x105000, READ)
    assert read.outcome == Outcome.FIXED and read.spte is not None and not read.spte & 0x2
    write = vm.fault(0x106000, WRITE)
    assert write.outcome == Outcome.EMULATE and write.spte is None
    with pytest.raises(Refused):
        vm_with("intel-tdx", VmType.TDX, slot(0, 0x100, 0x10, flags=KVM_MEM_READONLY))


def test_set_mmio_value_rules() -> None:
    vm = vm_with("intel-ept", VmType.DEFAULT, slot(0, 0x100, 0x10))
    with pytest.raises(InvalidInput) as err:
        vm.set_mmio_value(0x8)  # outside the EPT MMIO mask
    assert err.value.field == "value"
    with pytest.raises(InvalidInput):
        vm.set_mmio_value(1 << 63)  # every empty SPTE would look like MMIO
    vm.set_mmio_value(0)  # what TDX uses: allowed while the VM holds no SPTEs
    old = vm.fault(0x900000, READ).spte
    with pytest.raises(Refused):
        vm.set_mmio_value(0x6)
    assert vm.shadow_mmio_value == 0  # nothing changed
    zapped = vm.set_mmio_value(0x6, existing="zap")
    assert zapped.spte_changes > 0 and vm.shadow_mmio_value == 0x6
    assert all(v == SHADOW_NONPRESENT_VALUE or v != old for v in vm.dump().values.tolist())
    assert vm.fault(0x900000, READ).spte != old


def test_rejected_operations_change_nothing() -> None:
    vm = vm_with("intel-ept", VmType.DEFAULT, slot(0, 0x100, 0x100))
    vm.fault(0x120000, WRITE)
    before = (vm.generation, vm.stats(), vm.dump().values.tolist(), vm.memslots())
    with pytest.raises(Conflict):
        vm.create_memslot(slot(1, 0x180, 0x100))
    with pytest.raises(InvalidInput):
        vm.create_memslot(slot(1, 0x400, 0x10, flags=0x80))
    with pytest.raises(Refused):
        vm.create_memslot(slot(1, (1 << 34) - 4, 0x10, pfn_base=0x5000))  # past max gfn
    with pytest.raises(InvalidInput) as too_big:
        vm.create_memslot(slot(1, 0x1000, 1 << 31))  # npages must fit in 31 bits
    assert too_big.value.field == "npages"
    with pytest.raises(InvalidInput):
        vm.fault(1 << 52, READ)
    assert (vm.generation, vm.stats(), vm.dump().values.tolist(), vm.memslots()) == before


def test_unsupported_vm_type_is_refused_with_the_missing_requirement() -> None:
    with pytest.raises(Refused, match="TDX-capable hardware"):
        Vm(host("intel-ept"), VmType.TDX)
    with pytest.raises(Refused, match="AMD host with NPT"):
        Vm(host("intel-ept"), VmType.SNP)
    with pytest.raises(Refused, match="A/D bits"):
        Vm(host("intel-tdx", ad_bits=False), VmType.TDX)
    with pytest.raises(Refused, match="shadow MMU") as refused:
        Vm(host("intel-ept", tdp_mmu=False))  # KVM's legacy TDP: not modelled
    assert refused.value.field == "host.tdp_mmu"


@pytest.mark.parametrize(
    ("maxphyaddr", "new_base"),
    [
        (46, (1 << 34) - 0x80),  # the moved range ends past kvm_mmu_max_gfn
        (52, (1 << 40) - 0x80),  # ... which on a 52-bit host is the end of the GPA space
        (52, 1 << 50),  # far past it (a GPA of 62 bits): still KVM's arch check, not ours
    ],
)
def test_failed_move_still_zaps_and_bumps_twice(maxphyaddr: int, new_base: int) -> None:
    wide = {"maxphyaddr": maxphyaddr, "phys_bits": maxphyaddr, "cache_bits": maxphyaddr}
    vm = Vm(host("intel-ept", **wide, max_tdp_level=5 if maxphyaddr > 48 else 4))
    vm.create_memslot(slot(0, 0x100, 0x100))
    vm.fault(0x120000, WRITE)
    gen = vm.generation
    result = vm.move_memslot(0, new_base)
    assert result.result == "EINVAL" and result.generation == gen + 4
    assert vm.stats()["pages_4k"] == 0 and vm.memslots()[0].base_gfn == 0x100
    with pytest.raises(InvalidInput):  # past 2^64 bytes: KVM's generic check, nothing changes
        vm.move_memslot(0, (1 << 52) - 0x80)
    assert vm.generation == gen + 4


def test_dirty_log_flag_refused_on_guest_memfd() -> None:
    vm = vm_with(
        "intel-ept",
        VmType.SW_PROTECTED,
        slot(0, 0x100, 0x100, flags=KVM_MEM_GUEST_MEMFD, gmem_pfn_base=0x9000),
    )
    with pytest.raises(Refused):
        vm.set_dirty_logging(0, True)
    with pytest.raises(Refused):
        vm_with(
            "intel-ept",
            VmType.DEFAULT,
            slot(
                0, 0x100, 0x10, flags=KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_GUEST_MEMFD, gmem_pfn_base=1
            ),
        )
