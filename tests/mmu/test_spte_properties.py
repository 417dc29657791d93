"""Invariants the spec states for MMIO and leaf SPTEs, checked on random inputs."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mmu import batch, mmio, spte
from mmu.constants import PT_WRITABLE_MASK
from mmu.decode import SpteKind, decode_spte
from mmu.host import Host
from mmu.vmtypes import VmType, VmView
from tests.mmu.strategies import ept_hosts, hosts, mmio_gfns, pfns, u64


@given(data=st.data(), host=hosts)
def test_mmio_spte_round_trips_gfn_access_generation(data: st.DataObject, host: Host) -> None:
    vm = VmView.for_type(host, VmType.DEFAULT)
    gfn = data.draw(mmio_gfns(host))
    access = data.draw(st.integers(0, host.layout.acc_all))
    gen = data.draw(u64)
    value = mmio.make_mmio_spte(vm, gfn, access, gen)
    assert mmio.get_mmio_spte_gfn(host, value) == gfn
    assert mmio.get_mmio_spte_access(host, value) == access & host.shadow_mmio_access_mask
    assert mmio.get_mmio_spte_generation(host.layout, value) == gen & host.layout.mmio_gen_mask
    assert not spte.is_shadow_present_pte(value)


@given(data=st.data(), host=ept_hosts)
def test_mmio_spte_belongs_to_its_own_vm_only(data: st.DataObject, host: Host) -> None:
    vmx = VmView.for_type(host, VmType.DEFAULT)
    td = VmView(host=host, shadow_mmio_value=0, vm_type=VmType.TDX)
    gfn, gen = data.draw(mmio_gfns(host)), data.draw(u64)
    for own, other in ((vmx, td), (td, vmx)):
        value = mmio.make_mmio_spte(own, gfn, host.layout.acc_all, gen)
        assert mmio.is_mmio_spte(own, value)
        assert not mmio.is_mmio_spte(other, value)
        assert decode_spte(own, value).kind == SpteKind.MMIO
        assert decode_spte(other, value).kind == SpteKind.NON_PRESENT


@given(data=st.data(), host=hosts)
def test_leaf_sptes_are_never_mmio(data: st.DataObject, host: Host) -> None:
    pfn = data.draw(pfns(host))
    level = data.draw(st.integers(1, 3))
    pfn &= ~((1 << (9 * (level - 1))) - 1)
    access = data.draw(st.integers(0, host.layout.acc_all))
    value, _ = spte.make_spte(
        host,
        level=level,
        pte_access=access,
        pfn=pfn,
        prefetch=data.draw(st.booleans()),
        host_writable=data.draw(st.booleans()),
        ad_disabled=not host.kvm_ad_enabled,
    )
    for mmio_value in {host.shadow_mmio_value, 0}:
        vm = VmView(host=host, shadow_mmio_value=mmio_value)
        assert not mmio.is_mmio_spte(vm, value)
        assert decode_spte(vm, value, level).kind == SpteKind.LEAF
    assert spte.is_shadow_present_pte(value)
    assert spte.spte_to_pfn(host, value) == pfn


@given(data=st.data(), host=ept_hosts)
def test_access_track_mark_then_restore(data: st.DataObject, host: Host) -> None:
    """A/D-disabled EPT leaves: R/X(/XU) survive, W and A come back through faults."""
    pfn = data.draw(pfns(host))
    access = data.draw(st.integers(0, host.layout.acc_all))
    leaf, _ = spte.make_spte(host, level=1, pte_access=access, pfn=pfn, ad_disabled=True)
    # Without any of R/W/X the leaf already looks access-tracked and stays as it is.
    assume(leaf & host.shadow_acc_track_mask)
    marked = spte.mark_spte_for_access_track(host, leaf)
    assert spte.is_access_track_spte(host, marked)
    assert not spte.is_accessed_spte(host, marked)
    restored = spte.restore_acc_track_spte(host, marked)
    assert restored == leaf & ~(PT_WRITABLE_MASK | host.shadow_accessed_mask)
    # Marking is idempotent once tracked.
    assert spte.mark_spte_for_access_track(host, marked) == marked


@given(data=st.data(), host=hosts)
def test_ad_enabled_access_track_clears_only_accessed(data: st.DataObject, host: Host) -> None:
    if not host.kvm_ad_enabled:
        return
    leaf, _ = spte.make_spte(
        host, level=1, pte_access=host.layout.acc_all, pfn=data.draw(pfns(host))
    )
    assert spte.mark_spte_for_access_track(host, leaf) == leaf & ~host.shadow_accessed_mask


@settings(max_examples=50)
@given(data=st.data(), host=hosts)
def test_batch_equals_scalar(data: st.DataObject, host: Host) -> None:
    n = data.draw(st.integers(1, 64))
    level = data.draw(st.integers(1, 3))
    access = data.draw(st.integers(0, host.layout.acc_all))
    flags = {
        "prefetch": data.draw(st.booleans()),
        "synchronizing": data.draw(st.booleans()),
        "ad_disabled": data.draw(st.booleans()) and host.config.mmu == "ept",
        "unsync_denied": data.draw(st.booleans()),
        "mt_bits": data.draw(st.sampled_from([0, 0x30, 0x70])),
    }
    pfn_list = data.draw(st.lists(pfns(host), min_size=n, max_size=n))
    olds = data.draw(st.lists(u64, min_size=n, max_size=n))
    writable = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    got, got_wp = batch.make_spte_batch(
        host,
        level=level,
        pte_access=access,
        pfns=pfn_list,
        old_sptes=olds,
        host_writable=np.array(writable),
        **flags,
    )
    for i in range(n):
        want, want_wp = spte.make_spte(
            host,
            level=level,
            pte_access=access,
            pfn=pfn_list[i],
            old_spte=olds[i],
            host_writable=writable[i],
            **flags,
        )
        assert (int(got[i]), bool(got_wp[i])) == (want, want_wp)

    vm = VmView.for_type(host, data.draw(st.sampled_from([VmType.DEFAULT, VmType.TDX])))
    gfns = data.draw(st.lists(st.integers(0, (1 << 40) - 1), min_size=n, max_size=n))
    gen = data.draw(u64)
    mmio_batch = batch.make_mmio_spte_batch(vm, gfns, access, gen)
    assert [int(v) for v in mmio_batch] == [mmio.make_mmio_spte(vm, g, access, gen) for g in gfns]
    values = [*olds, *map(int, mmio_batch), *map(int, got)]
    classes = batch.classify_sptes(vm, values, level)
    for value, cls in zip(values, classes, strict=True):
        kind = decode_spte(vm, value, level).kind
        expected = {
            SpteKind.MMIO: batch.SpteClass.MMIO,
            SpteKind.LEAF: batch.SpteClass.LEAF,
            SpteKind.NON_LEAF: batch.SpteClass.NON_LEAF,
        }.get(kind, batch.SpteClass.NON_PRESENT)
        if kind == SpteKind.FROZEN:  # decode names it; the classifier asks the predicates
            expected = batch.SpteClass.MMIO if mmio.is_mmio_spte(vm, value) else expected
        assert cls == expected, hex(value)


@given(host=hosts, value=u64, level=st.sampled_from([None, 1, 2, 3, 4]))
def test_decode_covers_every_bit_once_in_order(host: Host, value: int, level: int | None) -> None:
    vm = VmView.for_type(host, VmType.DEFAULT)
    decoded = decode_spte(vm, value, level)
    covered = 0
    expected_lsb = 0
    for field in decoded.fields:
        assert field.lsb == expected_lsb
        assert field.msb >= field.lsb
        bits = ((1 << field.width) - 1) << field.lsb
        assert covered & bits == 0
        covered |= bits
        assert field.value == (value & bits) >> field.lsb
        expected_lsb = field.msb + 1
    assert covered == (1 << 64) - 1
