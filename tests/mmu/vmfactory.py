"""Building VMs with memslots for tests."""

from __future__ import annotations

from mmu.host import Host
from mmu.memslots import Memslot
from mmu.profiles import host_from_profile
from mmu.vm import Vm
from mmu.vmtypes import VmType

HOSTS: dict[str, Host] = {}


def host(profile: str, **overrides: object) -> Host:
    key = profile + repr(sorted(overrides.items()))
    if key not in HOSTS:
        HOSTS[key] = host_from_profile(profile, **overrides)  # type: ignore[arg-type]
    return HOSTS[key]


def slot(
    slot_id: int,
    base_gfn: int,
    npages: int,
    *,
    flags: int = 0,
    backing_level: int = 1,
    pfn_base: int | None = None,
    gmem_pfn_base: int | None = None,
) -> Memslot:
    """A memslot whose HVA and host PFNs are congruent with its GFNs."""
    pfn = 0x1000000 + base_gfn if pfn_base is None else pfn_base
    return Memslot(
        id=slot_id,
        base_gfn=base_gfn,
        npages=npages,
        flags=flags,
        userspace_addr=0x7F0000000000 + (base_gfn << 12),
        host_pfn_base=pfn,
        backing_level=backing_level,
        gmem_pfn_base=gmem_pfn_base,
    )


def vm_with(profile: str, vm_type: VmType = VmType.DEFAULT, *slots: Memslot, **kw: object) -> Vm:
    vm = Vm(host(profile), vm_type, **kw)  # type: ignore[arg-type]
    for s in slots:
        vm.create_memslot(s)
    return vm
