"""KVM x86 VM types and what each needs from the host (spec sections 2.7, 2.8, 3).

The gates are module-level in KVM (sev_hardware_setup, tdx_bringup): a host
whose set-up ends with MMIO caching off simply does not offer SEV-ES, SNP
or TDX. `unsupported_reason` says which requirement is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from mmu.host import Host


class VmType(IntEnum):
    DEFAULT = 0
    SW_PROTECTED = 1
    SEV = 2
    SEV_ES = 3
    SNP = 4
    TDX = 5

    @property
    def kernel_name(self) -> str:
        return f"KVM_X86_{self.name}_VM"

    @property
    def cli_name(self) -> str:
        return self.name.lower().replace("_", "-")

    @property
    def has_private_mem(self) -> bool:
        """kvm_arch_has_private_mem(): guest_memfd-backed private memory."""
        return self in (VmType.SW_PROTECTED, VmType.SNP, VmType.TDX)

    @property
    def has_protected_state(self) -> bool:
        """Register state KVM cannot read (so no READONLY memslots)."""
        return self in (VmType.SEV_ES, VmType.SNP, VmType.TDX)

    @property
    def nr_memslot_as_ids(self) -> int:
        """kvm_arch_nr_memslot_as_ids(): SMM needs a second address space."""
        return 1 if self.has_private_mem else 2

    @classmethod
    def parse(cls, text: str) -> VmType:
        key = text.strip().lower().replace("-", "_")
        for vm_type in cls:
            if key in (vm_type.name.lower(), vm_type.kernel_name.lower(), str(vm_type.value)):
                return vm_type
        raise ValueError(f"unknown VM type {text!r}")


def model_limit_reason(host: Host) -> str | None:
    """Why the model cannot run a VM on `host` although KVM could; None if it can.

    Such a host makes KVM use the shadow MMU (shadow paging or legacy TDP), which
    this model does not implement; refusing beats pretending it is the TDP MMU.
    """
    if not host.tdp_enabled:
        return "the model implements only the TDP MMU, which needs an EPT or NPT host"
    if not host.config.tdp_mmu:
        return "the model implements only the TDP MMU; with tdp_mmu off KVM uses the shadow MMU"
    return None


def unsupported_reason(host: Host, vm_type: VmType) -> str | None:
    """None if the host offers `vm_type`, else the missing requirement."""
    cfg = host.config
    if vm_type == VmType.DEFAULT:
        return None
    if vm_type == VmType.SW_PROTECTED:
        if not (cfg.tdp_enabled and cfg.tdp_mmu):
            return "KVM_X86_SW_PROTECTED_VM needs the TDP MMU (EPT or NPT with tdp_mmu on)"
        return None
    if vm_type == VmType.TDX:
        if host.tdx_allowed and cfg.tdx_module:
            return None
        missing = [
            what
            for what, ok in (
                ("TDX-capable hardware (host field tdx_module)", cfg.tdx_module),
                ("an Intel host", cfg.cpu_vendor == "intel"),
                ("EPT", cfg.mmu == "ept"),
                ("the TDP MMU", cfg.tdp_mmu),
                ("EPT A/D bits", cfg.ad_bits),
                ("MMIO caching", host.enable_mmio_caching),
            )
            if not ok
        ]
        return "TDX is not available on this host (it needs " + ", ".join(missing) + ")"
    # SEV family.
    if cfg.cpu_vendor != "amd" or cfg.mmu != "npt":
        return f"{vm_type.kernel_name} needs an AMD host with NPT"
    if not cfg.amd_mem_encrypt:
        return f"{vm_type.kernel_name} needs memory encryption enabled (SYSCFG.MemEncryptionModEn)"
    if vm_type in (VmType.SEV_ES, VmType.SNP) and not host.sev_es_allowed:
        return (
            f"{vm_type.kernel_name} needs MMIO caching (sev_hardware_setup disables SEV-ES "
            "when enable_mmio_caching is off)"
        )
    return None


def tdp_root_level(host: Host, guest_maxphyaddr: int) -> int:
    """kvm_mmu_get_tdp_level(); 0 for shadow paging."""
    cfg = host.config
    if cfg.mmu == "shadow":
        return 0
    if cfg.mmu == "npt":
        return cfg.max_tdp_level
    if cfg.max_tdp_level == 5 and guest_maxphyaddr <= 48:
        return 4
    return cfg.max_tdp_level


def tdp_has_smep(host: Host, vm_type: VmType) -> bool | None:
    """cr4_smep of the TDP root role (mbec): MBEC on EPT (never for a TD), GMET on NPT."""
    cfg = host.config
    if cfg.mmu == "shadow":
        return None
    if cfg.mmu == "ept":
        return cfg.mbec and vm_type != VmType.TDX
    return cfg.npt_gmet


def tdp_root_access(host: Host, vm_type: VmType) -> int | None:
    """ACC_* bits of the TDP root role: ACC_ALL, minus ACC_USER under NPT+GMET."""
    smep = tdp_has_smep(host, vm_type)
    if smep is None:
        return None
    access = host.layout.acc_all
    if smep and host.shadow_user_mask:
        access &= ~host.layout.acc_user
    return access


@dataclass(frozen=True, slots=True)
class VmView:
    """The parts of a VM the SPTE functions read: host masks and the per-VM MMIO value."""

    host: Host
    shadow_mmio_value: int
    vm_type: VmType = VmType.DEFAULT

    @classmethod
    def for_type(cls, host: Host, vm_type: VmType) -> VmView:
        """A VM as kvm_mmu_init_vm + vendor init leave it (TDX sets its value to 0)."""
        value = 0 if vm_type == VmType.TDX else host.shadow_mmio_value
        return cls(host=host, shadow_mmio_value=value, vm_type=vm_type)
