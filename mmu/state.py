"""The state of one VM's MMU: what `struct kvm`, its vCPU and kvm->arch hold.

Operations live in tdp_mmu / fault / memslot_ops / dirty_log; `vm.Vm` is the
public, validating face of this state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from mmu.attributes import PrivateRanges
from mmu.constants import PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K
from mmu.host import Host
from mmu.memslots import Memslots
from mmu.pool import TREE_DIRECT, TREE_MIRROR, TablePool
from mmu.vmtypes import VmType, tdp_root_access, tdp_root_level

STAT_NAMES = (
    "pf_taken",
    "pf_fixed",
    "pf_emulate",
    "pf_spurious",
    "pf_fast",
    "pf_mmio_spte_created",
    "pages_4k",
    "pages_2m",
    "pages_1g",
    "nx_lpage_splits",
)


@dataclass(slots=True)
class Stats:
    """vCPU and VM statistics under KVM's names (spec section 10)."""

    pf_taken: int = 0
    pf_fixed: int = 0
    pf_emulate: int = 0
    pf_spurious: int = 0
    pf_fast: int = 0
    pf_mmio_spte_created: int = 0
    pages_4k: int = 0
    pages_2m: int = 0
    pages_1g: int = 0
    nx_lpage_splits: int = 0

    def add_pages(self, level: int, delta: int) -> None:
        if level == PG_LEVEL_4K:
            self.pages_4k += delta
        elif level == PG_LEVEL_2M:
            self.pages_2m += delta
        elif level == PG_LEVEL_1G:
            self.pages_1g += delta

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def tdx_shared_gfn_bit(guest_maxphyaddr: int) -> int:
    """TDX_SHARED_BIT_PWL_5/4 as a GFN bit: GPA bit 51 with GPAW 52, else bit 47."""
    return 1 << (51 - 12) if guest_maxphyaddr > 48 else 1 << (47 - 12)


@dataclass(slots=True)
class MmioCache:
    """vcpu->arch.mmio_gfn / mmio_access / mmio_gen."""

    gfn: int
    access: int
    generation: int


@dataclass(slots=True)
class VmState:
    host: Host
    vm_type: VmType
    guest_maxphyaddr: int
    shadow_mmio_value: int
    mt_bits: int
    slot_zap_all_quirk: bool
    pool: TablePool
    memslots: Memslots
    attributes: PrivateRanges = field(default_factory=PrivateRanges)
    direct_root: int | None = None
    mirror_root: int | None = None
    mmio_cache: MmioCache | None = None
    # kvm->arch.mmu_valid_gen: toggled 0 <-> 1 by every fast zap.
    mmu_valid_gen: int = 0
    stats: Stats = field(default_factory=Stats)
    root_level: int = 0
    nr_as_ids: int = 2
    gfn_direct_bits: int = 0
    root_access: int = 7
    # Fixed facts of the VM type, kept as plain fields for the fault path.
    is_tdx: bool = False
    is_sw_protected: bool = False
    has_private_mem: bool = False

    def __post_init__(self) -> None:
        self.is_tdx = self.vm_type == VmType.TDX
        self.is_sw_protected = self.vm_type == VmType.SW_PROTECTED
        self.has_private_mem = self.vm_type.has_private_mem
        self.root_level = tdp_root_level(self.host, self.guest_maxphyaddr)
        self.nr_as_ids = self.vm_type.nr_memslot_as_ids
        if self.vm_type == VmType.TDX:
            self.gfn_direct_bits = tdx_shared_gfn_bit(self.guest_maxphyaddr)
        self.root_access = tdp_root_access(self.host, self.vm_type) or self.host.layout.acc_all

    @property
    def generation(self) -> int:
        return self.memslots.generation

    @property
    def nx_huge_pages(self) -> bool:
        return self.host.config.nx_huge_pages

    def mem_is_private(self, gfn: int) -> bool:
        """kvm_mem_is_private(): the PRIVATE attribute (only VMs with private memory have it)."""
        return self.has_private_mem and self.attributes.is_private(gfn)

    def root_slot(self, tree: int) -> int | None:
        return self.direct_root if tree == TREE_DIRECT else self.mirror_root

    def roots(self) -> list[tuple[int, int]]:
        """(tree, slot) of the valid roots, newest first as KVM's root list is."""
        out = []
        if self.direct_root is not None:
            out.append((TREE_DIRECT, self.direct_root))
        if self.mirror_root is not None:
            out.append((TREE_MIRROR, self.mirror_root))
        return out

    def root_gfn_bits(self, tree: int) -> int:
        """kvm_gfn_root_bits(): the shared bit for a TD's direct root, else 0."""
        return self.gfn_direct_bits if tree == TREE_DIRECT else 0

    def child_slot(self, spte: int) -> int:
        return self.pool.slot_of_pfn((spte & self.host.spte_base_addr_mask) >> 12)
