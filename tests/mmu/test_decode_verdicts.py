"""What decode_spte tells a reader about values that are not MMIO for the VM."""

from __future__ import annotations

from mmu.decode import decode_spte
from mmu.vmtypes import VmView
from tests.mmu.vmfactory import host

HINT = "this would be an MMIO SPTE in a TDX VM"


def test_the_tdx_mmio_hint_appears_only_where_a_td_can_run() -> None:
    # A value with (spte & mask) == 0 is MMIO for a TD (MMIO value 0); saying so
    # is useful on a TDX host and noise on one that cannot run TDs.
    value = 0x12345000  # bit 63 clear, RWX = 000
    tdx_host, plain_ept = host("intel-tdx"), host("intel-ept")
    on_tdx = decode_spte(VmView(tdx_host, tdx_host.shadow_mmio_value), value, 1)
    on_ept = decode_spte(VmView(plain_ept, plain_ept.shadow_mmio_value), value, 1)
    assert any(HINT in reason for reason in on_tdx.reasons)
    assert not any(HINT in reason for reason in on_ept.reasons)
    assert on_tdx.kind == on_ept.kind and not on_tdx.is_mmio_for_vm
