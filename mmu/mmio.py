"""MMIO SPTEs: encoding, decoding and the generation check (spec section 5).

An MMIO SPTE caches "no memslot here, emulate" as a deliberately malformed
entry tagged with the memslot generation. The pattern that marks it is per
VM (kvm->arch.shadow_mmio_value) while the mask stays global, so every
function that asks "is this MMIO?" takes the VM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mmu.bits import U64_MASK
from mmu.constants import (
    KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
    RET_PF_EMULATE,
    RET_PF_INVALID,
    RET_PF_RETRY,
    SHADOW_NONPRESENT_OR_RSVD_MASK_LEN,
)
from mmu.host import Host
from mmu.layout import MMIO_SPTE_GEN_LOW_SHIFT, SpteLayout


class MmioVm(Protocol):
    """Anything with a host and a per-VM MMIO value (a VM, or a VmView)."""

    @property
    def host(self) -> Host: ...

    @property
    def shadow_mmio_value(self) -> int: ...


def generation_mmio_spte_mask(
    layout: SpteLayout, gen: int, warnings: list[str] | None = None
) -> int:
    """Scatter a memslot generation into the MMIO SPTE's generation bits."""
    if gen & ~layout.mmio_gen_mask and warnings is not None:
        warnings.append("gen_exceeds_mmio_gen_mask")
    return ((gen << MMIO_SPTE_GEN_LOW_SHIFT) & layout.mmio_gen_low_mask) | (
        (gen << layout.mmio_gen_high_shift) & layout.mmio_gen_high_mask
    )


def get_mmio_spte_generation(layout: SpteLayout, spte: int) -> int:
    return ((spte & layout.mmio_gen_low_mask) >> MMIO_SPTE_GEN_LOW_SHIFT) | (
        (spte & layout.mmio_gen_high_mask) >> layout.mmio_gen_high_shift
    )


def make_mmio_spte(vm: MmioVm, gfn: int, access: int, generation: int) -> int:
    """make_mmio_spte(): generation, the VM's MMIO value, access, GPA with the L1TF split."""
    host = vm.host
    gen = generation & host.layout.mmio_gen_mask
    spte = generation_mmio_spte_mask(host.layout, gen)
    spte |= vm.shadow_mmio_value | (access & host.shadow_mmio_access_mask)
    gpa = (gfn << 12) & U64_MASK
    rsvd = host.shadow_nonpresent_or_rsvd_mask
    spte |= gpa | rsvd
    spte |= (gpa & rsvd) << SHADOW_NONPRESENT_OR_RSVD_MASK_LEN
    return spte & U64_MASK


def get_mmio_spte_gfn(host: Host, spte: int) -> int:
    """GPA bits outside the lower and relocation masks are lost, as in KVM."""
    rsvd = host.shadow_nonpresent_or_rsvd_mask
    gpa = (spte & host.shadow_nonpresent_or_rsvd_lower_gfn_mask) | (
        (spte >> SHADOW_NONPRESENT_OR_RSVD_MASK_LEN) & rsvd
    )
    return gpa >> 12


def get_mmio_spte_access(host: Host, spte: int) -> int:
    return spte & host.shadow_mmio_access_mask


def is_mmio_spte(vm: MmioVm, spte: int) -> bool:
    """(spte & global mask) == the VM's value, and only while caching is enabled."""
    host = vm.host
    return (spte & host.shadow_mmio_mask) == vm.shadow_mmio_value and host.enable_mmio_caching


@dataclass(frozen=True, slots=True)
class MmioCheck:
    """check_mmio_spte(): `traced` is False when the kernel returns before tracing."""

    valid: bool
    kvm_gen: int
    spte_gen: int
    traced: bool


def check_mmio_spte(layout: SpteLayout, spte: int, memslots_generation: int) -> MmioCheck:
    kvm_gen = memslots_generation & layout.mmio_gen_mask
    spte_gen = get_mmio_spte_generation(layout, spte)
    if memslots_generation & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
        return MmioCheck(False, kvm_gen, spte_gen, traced=False)
    return MmioCheck(kvm_gen == spte_gen, kvm_gen, spte_gen, traced=True)


def mmio_gen_wraps(layout: SpteLayout, nr_as_ids: int, new_generation: int) -> bool:
    """kvm_mmu_invalidate_mmio_sptes(): does this generation force a full zap?"""
    gen = new_generation & layout.mmio_gen_mask & ~(nr_as_ids - 1)
    return gen == 0


def mmio_gen_wrap_zaps(host: Host, nr_as_ids: int, new_generation: int) -> bool:
    """The wrap only matters while MMIO caching is on."""
    return host.enable_mmio_caching and mmio_gen_wraps(host.layout, nr_as_ids, new_generation)


@dataclass(frozen=True, slots=True)
class MmioFaultLeaf:
    """What handle_mmio_page_fault decides from the last SPTE of its walk."""

    result: int  # RET_PF_EMULATE, RET_PF_INVALID (stale) or RET_PF_RETRY
    check: MmioCheck | None  # None when the SPTE is not MMIO (no check_mmio_spte)
    gfn: int | None
    access: int | None


def handle_mmio_spte(vm: MmioVm, spte: int, memslots_generation: int) -> MmioFaultLeaf:
    """The decision of handle_mmio_page_fault once the walk found `spte`."""
    if not is_mmio_spte(vm, spte):
        return MmioFaultLeaf(RET_PF_RETRY, None, None, None)
    host = vm.host
    gfn, access = get_mmio_spte_gfn(host, spte), get_mmio_spte_access(host, spte)
    check = check_mmio_spte(host.layout, spte, memslots_generation)
    result = RET_PF_EMULATE if check.valid else RET_PF_INVALID
    return MmioFaultLeaf(result, check, gfn, access)
