"""Values the client returns for the host, VMs and memslots.

One style throughout the client: a small frozen dataclass per proto message,
with the proto's field names, ints for every integer (64-bit values
included), `client.enums` members for enums, `None` for an unset optional
field, tuples for repeated fields and an aware UTC `datetime` for
timestamps. Each also keeps the message it came from as `proto` (not part of
equality or repr): use it with `google.protobuf.json_format`, or to read a
field added to the API after this client. The proto comments in
`protos/kvmmu/v1/` document every field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from client.enums import (
    BackingPageSize,
    CpuVendor,
    KernelLayout,
    MemoryAttributesResult,
    MemslotChange,
    MemslotChangeResult,
    MemslotZap,
    MmuKind,
    VmType,
)
from kvmmu.v1 import host_pb2, memslot_pb2, vm_pb2


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    """The inputs of the kvm modules (kvmmu.v1.HostConfig): CPU facts and module parameters."""

    kernel_layout: KernelLayout
    cpu_vendor: CpuVendor
    mmu: MmuKind
    ad_bits: bool
    ept_exec_only: bool
    phys_bits: int
    maxphyaddr: int
    cache_bits: int
    l1tf: bool
    mmio_caching: bool
    amd_mem_encrypt: bool
    amd_enc_bit: int
    host_sme_mask: int
    nx_huge_pages: bool
    max_tdp_level: int
    tdp_huge_page_level: int
    gbpages: bool
    tdp_mmu: bool
    pml: bool
    eager_page_split: bool
    mbec: bool
    npt_gmet: bool
    tdx_module: bool
    proto: host_pb2.HostConfig = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostGlobals:
    """The globals KVM derives at module load (kvmmu.v1.HostGlobals), under the kernel's names."""

    shadow_present_mask: int
    shadow_user_mask: int
    shadow_x_mask: int
    shadow_xs_mask: int
    shadow_xu_mask: int
    shadow_nx_mask: int
    shadow_accessed_mask: int
    shadow_dirty_mask: int
    shadow_acc_track_mask: int
    shadow_host_writable_mask: int
    shadow_mmu_writable_mask: int
    shadow_me_value: int
    shadow_me_mask: int
    shadow_nonpresent_or_rsvd_mask: int
    shadow_nonpresent_or_rsvd_lower_gfn_mask: int
    shadow_mmio_value: int
    shadow_mmio_mask: int
    shadow_mmio_access_mask: int
    allow_mmio_caching: bool
    enable_mmio_caching: bool
    kvm_ad_enabled: bool
    spte_base_addr_mask: int
    has_get_mt_mask: bool
    max_huge_page_level: int
    sev_es_allowed: bool
    tdx_allowed: bool
    setup_warnings: tuple[str, ...]
    kvm_mmu_max_gfn: int
    proto: host_pb2.HostGlobals = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class VmTypeSupport:
    """Whether a host offers one VM type, and if not, why."""

    vm_type: VmType
    supported: bool
    unsupported_reason: str
    proto: host_pb2.VmTypeSupport = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    """The server's host ("host"): the profile it started from, its inputs and derived globals."""

    name: str
    profile: str
    overridden_fields: tuple[str, ...]
    config: HostConfig
    globals: HostGlobals
    vm_types: tuple[VmTypeSupport, ...]
    proto: host_pb2.Host = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostProfile:
    """A ready-made host configuration ("hostProfiles/{profile}")."""

    name: str
    description: str
    config: HostConfig
    globals: HostGlobals
    vm_types: tuple[VmTypeSupport, ...]
    proto: host_pb2.HostProfile = field(repr=False, compare=False)

    @property
    def profile_id(self) -> str:
        """The {profile} segment of the name (e.g. "intel-tdx")."""
        return self.name.removeprefix("hostProfiles/")


@dataclass(frozen=True, slots=True, kw_only=True)
class VmStats:
    """A VM's statistics under the names KVM exposes in debugfs ("vms/{vm}/stats")."""

    name: str
    pf_taken: int
    pf_fixed: int
    pf_emulate: int
    pf_spurious: int
    pf_fast: int
    pf_mmio_spte_created: int
    pages_4k: int
    pages_2m: int
    pages_1g: int
    nx_lpage_splits: int
    direct_tables: int
    mirror_tables: int
    proto: vm_pb2.VmStats = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Vm:
    """A VM and its MMU state ("vms/{vm}"); `stats` is set only when asked for."""

    name: str
    vm_id: str
    display_name: str
    vm_type: VmType
    mmio_value: int
    guest_maxphyaddr: int
    tdp_root_level: int
    nr_memslot_as_ids: int
    memslots_generation: int
    create_time: datetime | None
    tracing_enabled: bool
    gfn_direct_bits: int
    slot_zap_all_quirk: bool | None
    mt_bits: int | None
    initial_generation: int
    tdp_has_smep: bool | None
    tdp_root_access: int | None
    stats: VmStats | None
    proto: vm_pb2.Vm = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetMmioValueResult:
    """The VM after SetMmioValue, and how many SPTEs the optional zap changed."""

    vm: Vm
    spte_changes: int
    proto: vm_pb2.SetMmioValueResponse = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Memslot:
    """A memslot of address space 0 ("vms/{vm}/memslots/{slot}")."""

    name: str
    slot: int
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    log_dirty_pages: bool
    readonly: bool
    guest_memfd: bool
    host_pfn_base: int
    backing_page_size: BackingPageSize
    gmem_pfn_base: int | None
    base_gfn: int
    npages: int
    proto: memslot_pb2.Memslot = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemslotChangeOutcome:
    """What a memslot change did to the generation and the SPTEs."""

    change: MemslotChange
    result: MemslotChangeResult
    generation: int
    mmio_gen_wrap: bool
    zap: MemslotZap
    spte_changes: int
    proto: memslot_pb2.MemslotChangeOutcome = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetMemslotResult:
    """The memslot after SetMemslot, and what the change did."""

    memslot: Memslot
    outcome: MemslotChangeOutcome
    proto: memslot_pb2.SetMemslotResponse = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteMemslotResult:
    """What DeleteMemslot did (two generation bumps, the zap, SPTE changes)."""

    outcome: MemslotChangeOutcome
    proto: memslot_pb2.DeleteMemslotResponse = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetMemoryAttributesResult:
    """Result of SetMemoryAttributes: applied or no-op, and the SPTEs zapped."""

    result: MemoryAttributesResult
    spte_changes: int
    proto: memslot_pb2.SetMemoryAttributesResponse = field(repr=False, compare=False)
