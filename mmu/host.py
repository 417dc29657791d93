"""Host configuration: the inputs of the kvm modules and every mask they derive.

Models kvm_mmu_spte_module_init, kvm_mmu_reset_all_pte_masks,
kvm_mmu_set_mmio_spte_mask, kvm_mmu_set_me_spte_mask, kvm_mmu_set_ept_masks,
vmx_setup_me_spte_mask, svm_adjust_mmio_mask and the module-level feature
gates (spec section 2), in the kernel's order. The result is an immutable
`Host`; nothing here is a module global, so many hosts can coexist.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Final, Literal

from mmu.bits import BIT, GENMASK, fits_u64, rsvd_bits
from mmu.constants import (
    DEFAULT_SPTE_HOST_WRITABLE,
    DEFAULT_SPTE_MMU_WRITABLE,
    PT64_NX_MASK,
    PT_ACCESSED_MASK,
    PT_DIRTY_MASK,
    PT_PRESENT_MASK,
    PT_USER_MASK,
    SHADOW_NONPRESENT_OR_RSVD_MASK_LEN,
    SPTE_BASE_ADDR_MASK,
    VMX_EPT_ACCESS_BIT,
    VMX_EPT_DIRTY_BIT,
    VMX_EPT_EXECUTABLE_MASK,
    VMX_EPT_MISCONFIG_WX_VALUE,
    VMX_EPT_READABLE_MASK,
    VMX_EPT_RWX_MASK,
    VMX_EPT_SUPPRESS_VE_BIT,
)
from mmu.errors import InvalidInput
from mmu.layout import LAYOUTS, SpteLayout
from mmu.rsvd import RsvdTable, build_tdp_rsvd_table

Vendor = Literal["intel", "amd"]
MmuKind = Literal["ept", "npt", "shadow"]

# The L1TF mitigation needs 5 cacheable PA bits above the relocated ones.
L1TF_MAX_CACHE_BITS: Final = 52 - SHADOW_NONPRESENT_OR_RSVD_MASK_LEN


@dataclass(frozen=True, slots=True)
class HostConfig:
    """What the kvm modules are given: CPU facts and module parameters."""

    kernel_layout: str = "v6"
    cpu_vendor: str = "intel"
    mmu: str = "ept"
    ad_bits: bool = True
    ept_exec_only: bool = True
    phys_bits: int = 46
    maxphyaddr: int = 46
    cache_bits: int = 46
    l1tf: bool = False
    mmio_caching: bool = True
    amd_mem_encrypt: bool = False
    amd_enc_bit: int = 0
    host_sme_mask: int = 0
    nx_huge_pages: bool = False
    max_tdp_level: int = 4
    tdp_huge_page_level: int = 3
    gbpages: bool = True
    tdp_mmu: bool = True
    pml: bool = False
    eager_page_split: bool = True
    mbec: bool = False
    npt_gmet: bool = False
    tdx_module: bool = False  # the CPU/BIOS provide TDX (a loaded TDX module)

    def validate(self) -> None:
        """Reject combinations no real host or kvm module set-up produces."""
        if self.kernel_layout not in LAYOUTS:
            raise InvalidInput(f"must be one of {sorted(LAYOUTS)}", field="kernel_layout")
        if self.cpu_vendor not in ("intel", "amd"):
            raise InvalidInput("must be 'intel' or 'amd'", field="cpu_vendor")
        allowed_mmu = ("ept", "shadow") if self.cpu_vendor == "intel" else ("npt", "shadow")
        if self.mmu not in allowed_mmu:
            raise InvalidInput(f"a {self.cpu_vendor} host uses one of {allowed_mmu}", field="mmu")
        for name in ("phys_bits", "maxphyaddr", "cache_bits"):
            value = getattr(self, name)
            if not 32 <= value <= 52:
                raise InvalidInput("must be between 32 and 52", field=name)
        if self.phys_bits > self.maxphyaddr:
            raise InvalidInput("cannot exceed maxphyaddr", field="phys_bits")
        if self.mmu != "ept" and not self.ad_bits:
            raise InvalidInput("only EPT can run without A/D bits", field="ad_bits")
        if self.mmu != "ept" and self.ept_exec_only:
            raise InvalidInput("execute-only entries exist only with EPT", field="ept_exec_only")
        if self.mbec and self.mmu != "ept":
            raise InvalidInput("MBEC is an Intel EPT feature", field="mbec")
        if self.npt_gmet and self.mmu != "npt":
            raise InvalidInput("GMET is an AMD NPT feature", field="npt_gmet")
        if self.cpu_vendor == "intel" and (self.amd_mem_encrypt or self.host_sme_mask):
            raise InvalidInput("AMD memory encryption on an Intel host", field="amd_mem_encrypt")
        if self.amd_mem_encrypt and not 32 <= self.amd_enc_bit <= 51:
            raise InvalidInput("C-bit must be a PA bit between 32 and 51", field="amd_enc_bit")
        if self.host_sme_mask not in (0, BIT(self.amd_enc_bit)) or (
            self.host_sme_mask and not self.amd_mem_encrypt
        ):
            raise InvalidInput(
                "must be 0 or 1 << amd_enc_bit with amd_mem_encrypt", field="host_sme_mask"
            )
        if self.max_tdp_level not in (4, 5):
            raise InvalidInput("must be 4 or 5", field="max_tdp_level")
        if not 1 <= self.tdp_huge_page_level <= 3:
            raise InvalidInput("must be 1 (4K), 2 (2M) or 3 (1G)", field="tdp_huge_page_level")
        if self.tdx_module and self.cpu_vendor != "intel":
            raise InvalidInput("TDX is an Intel feature", field="tdx_module")
        if self.tdp_mmu and self.mmu == "shadow":
            raise InvalidInput("the TDP MMU needs EPT or NPT", field="tdp_mmu")

    @property
    def layout(self) -> SpteLayout:
        return LAYOUTS[self.kernel_layout]

    @property
    def tdp_enabled(self) -> bool:
        return self.mmu != "shadow"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def override(self, **changes: Any) -> HostConfig:
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise InvalidInput(f"unknown host field(s) {unknown}", field=unknown[0])
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class MmioMaskResult:
    """State after kvm_mmu_set_mmio_spte_mask()."""

    shadow_mmio_value: int
    shadow_mmio_mask: int
    shadow_mmio_access_mask: int
    enable_mmio_caching: bool
    warnings: tuple[str, ...]


def kvm_mmu_set_mmio_spte_mask(
    layout: SpteLayout,
    *,
    allow_mmio_caching: bool,
    lower_gfn_mask: int,
    nonpresent_or_rsvd_mask: int,
    value: int,
    mask: int,
    access_mask: int,
) -> MmioMaskResult:
    """The global MMIO-pattern setter, with every check in the kernel's order."""
    if access_mask >> 32:
        # The kernel BUG()s here; the model refuses the configuration.
        raise InvalidInput("MMIO access mask does not fit in 32 bits", field="access_mask")
    warnings: list[str] = []
    if value & lower_gfn_mask:
        warnings.append("mmio_value_overlaps_lower_gfn_mask")
    enable = allow_mmio_caching
    if not enable:
        value = 0
    if mask & ~layout.mmio_allowed_mask:
        warnings.append("mmio_mask_outside_allowed_mask")
        value = 0
    if value & (nonpresent_or_rsvd_mask << SHADOW_NONPRESENT_OR_RSVD_MASK_LEN):
        warnings.append("mmio_value_overlaps_l1tf_relocated_gfn_bits")
        value = 0
    if (value & mask) != value:
        warnings.append("mmio_value_not_subset_of_mask")
        value = 0
    elif value and (layout.frozen_spte & mask) == value:
        warnings.append("frozen_spte_matches_mmio_value")
        value = 0
    if not value:
        enable = False
    return MmioMaskResult(value, mask, access_mask, enable, tuple(warnings))


def kvm_mmu_set_me_spte_mask(me_value: int, me_mask: int) -> tuple[int, int, tuple[str, ...]]:
    """Memory-encryption value/mask; a value outside the mask zeroes both."""
    if me_value & ~me_mask:
        return 0, 0, ("me_value_not_subset_of_me_mask",)
    return me_value, me_mask, ()


@dataclass(frozen=True, slots=True)
class Host:
    """A host after module load: its inputs and every derived global."""

    config: HostConfig
    layout: SpteLayout
    kvm_ad_enabled: bool
    shadow_present_mask: int
    shadow_user_mask: int
    shadow_x_mask: int
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
    spte_base_addr_mask: int
    has_get_mt_mask: bool
    max_huge_page_level: int
    sev_es_allowed: bool
    tdx_allowed: bool
    setup_warnings: tuple[str, ...]
    rsvd: RsvdTable | None = field(default=None)

    @property
    def shadow_xs_mask(self) -> int:
        """mbec's name for shadow_x_mask (supervisor execute)."""
        return self.shadow_x_mask

    @property
    def tdp_enabled(self) -> bool:
        return self.config.tdp_enabled

    @property
    def kvm_mmu_max_gfn(self) -> int:
        """Highest GFN a TDP MMU maps (kvm_mmu_max_gfn)."""
        return (1 << (self.config.maxphyaddr - 12)) - 1

    def with_mmio_mask(
        self, value: int, mask: int, access_mask: int
    ) -> tuple[Host, MmioMaskResult]:
        """Call the MMIO setter again on top of this host (as a vendor module would)."""
        result = kvm_mmu_set_mmio_spte_mask(
            self.layout,
            allow_mmio_caching=self.allow_mmio_caching,
            lower_gfn_mask=self.shadow_nonpresent_or_rsvd_lower_gfn_mask,
            nonpresent_or_rsvd_mask=self.shadow_nonpresent_or_rsvd_mask,
            value=value,
            mask=mask,
            access_mask=access_mask,
        )
        host = replace(
            self,
            shadow_mmio_value=result.shadow_mmio_value,
            shadow_mmio_mask=result.shadow_mmio_mask,
            shadow_mmio_access_mask=result.shadow_mmio_access_mask,
            enable_mmio_caching=result.enable_mmio_caching,
        )
        return host, result

    def derived_dict(self) -> dict[str, int | bool | list[str]]:
        """The derived globals under the kernel's names (as the vectors report them)."""
        return {
            "shadow_present_mask": self.shadow_present_mask,
            "shadow_user_mask": self.shadow_user_mask,
            "shadow_x_mask": self.shadow_x_mask,
            "shadow_xs_mask": self.shadow_x_mask,
            "shadow_xu_mask": self.shadow_xu_mask,
            "shadow_nx_mask": self.shadow_nx_mask,
            "shadow_accessed_mask": self.shadow_accessed_mask,
            "shadow_dirty_mask": self.shadow_dirty_mask,
            "shadow_acc_track_mask": self.shadow_acc_track_mask,
            "shadow_host_writable_mask": self.shadow_host_writable_mask,
            "shadow_mmu_writable_mask": self.shadow_mmu_writable_mask,
            "shadow_me_value": self.shadow_me_value,
            "shadow_me_mask": self.shadow_me_mask,
            "shadow_nonpresent_or_rsvd_mask": self.shadow_nonpresent_or_rsvd_mask,
            "shadow_nonpresent_or_rsvd_lower_gfn_mask": (
                self.shadow_nonpresent_or_rsvd_lower_gfn_mask
            ),
            "shadow_mmio_value": self.shadow_mmio_value,
            "shadow_mmio_mask": self.shadow_mmio_mask,
            "shadow_mmio_access_mask": self.shadow_mmio_access_mask,
            "enable_mmio_caching": self.enable_mmio_caching,
            "kvm_ad_enabled": self.kvm_ad_enabled,
            "spte_base_addr_mask": self.spte_base_addr_mask,
            "has_get_mt_mask": self.has_get_mt_mask,
            "max_huge_page_level": self.max_huge_page_level,
            "sev_es_allowed": self.sev_es_allowed,
            "tdx_allowed": self.tdx_allowed,
            "setup_warnings": list(self.setup_warnings),
        }


class _Setup:
    """Mutable scratch state while the module-load steps run in order."""

    def __init__(self, cfg: HostConfig) -> None:
        self.cfg = cfg
        self.layout = cfg.layout
        self.warnings: list[str] = []
        # kvm_mmu_spte_module_init
        self.allow_mmio_caching = cfg.mmio_caching
        self.enable_mmio_caching = cfg.mmio_caching

    def reset_all_pte_masks(self) -> None:
        cfg = self.cfg
        self.kvm_ad_enabled = True
        self.nonpresent_or_rsvd_mask = 0
        low_phys_bits = cfg.phys_bits
        if cfg.l1tf:
            if cfg.cache_bits < L1TF_MAX_CACHE_BITS:
                low_phys_bits = cfg.cache_bits - SHADOW_NONPRESENT_OR_RSVD_MASK_LEN
                self.nonpresent_or_rsvd_mask = rsvd_bits(low_phys_bits, cfg.cache_bits - 1)
            else:
                self.warnings.append("l1tf_cache_bits_too_large")
        self.lower_gfn_mask = GENMASK(low_phys_bits - 1, 12)
        self.user_mask = PT_USER_MASK
        self.accessed_mask = PT_ACCESSED_MASK
        self.dirty_mask = PT_DIRTY_MASK
        self.nx_mask = PT64_NX_MASK
        self.x_mask = 0
        self.xu_mask = 0
        self.present_mask = PT_PRESENT_MASK
        self.acc_track_mask = 0
        self.me_value = 0
        self.me_mask = 0
        self.host_writable_mask = DEFAULT_SPTE_HOST_WRITABLE
        self.mmu_writable_mask = DEFAULT_SPTE_MMU_WRITABLE
        mask = (BIT(51) | PT_PRESENT_MASK) if cfg.maxphyaddr < 52 else 0
        self.set_mmio_spte_mask(mask, mask, self.layout.acc_write | self.layout.acc_user)

    def set_mmio_spte_mask(self, value: int, mask: int, access_mask: int) -> None:
        result = kvm_mmu_set_mmio_spte_mask(
            self.layout,
            allow_mmio_caching=self.allow_mmio_caching,
            lower_gfn_mask=self.lower_gfn_mask,
            nonpresent_or_rsvd_mask=self.nonpresent_or_rsvd_mask,
            value=value,
            mask=mask,
            access_mask=access_mask,
        )
        self.warnings.extend(result.warnings)
        self.mmio_value = result.shadow_mmio_value
        self.mmio_mask = result.shadow_mmio_mask
        self.mmio_access_mask = result.shadow_mmio_access_mask
        self.enable_mmio_caching = result.enable_mmio_caching

    def set_me_spte_mask(self, me_value: int, me_mask: int) -> None:
        self.me_value, self.me_mask, warnings = kvm_mmu_set_me_spte_mask(me_value, me_mask)
        self.warnings.extend(warnings)

    def set_ept_masks(self) -> None:
        cfg, layout = self.cfg, self.layout
        self.kvm_ad_enabled = cfg.ad_bits
        self.user_mask = layout.ept_user_mask
        self.accessed_mask = VMX_EPT_ACCESS_BIT
        self.dirty_mask = VMX_EPT_DIRTY_BIT
        self.nx_mask = 0
        self.x_mask = VMX_EPT_EXECUTABLE_MASK
        self.xu_mask = layout.ept_xu_mask
        readable = layout.ept_present_r_without_exec_only and not cfg.ept_exec_only
        self.present_mask = (VMX_EPT_READABLE_MASK if readable else 0) | VMX_EPT_SUPPRESS_VE_BIT
        self.acc_track_mask = layout.ept_acc_track_mask
        self.host_writable_mask = layout.ept_host_writable
        self.mmu_writable_mask = layout.ept_mmu_writable
        self.set_mmio_spte_mask(
            VMX_EPT_MISCONFIG_WX_VALUE, VMX_EPT_RWX_MASK | VMX_EPT_SUPPRESS_VE_BIT, 0
        )

    def vmx_setup_me_spte_mask(self) -> None:
        cfg = self.cfg
        me_mask = (
            rsvd_bits(cfg.phys_bits, cfg.maxphyaddr - 1) if cfg.phys_bits != cfg.maxphyaddr else 0
        )
        self.set_me_spte_mask(0, me_mask)

    def svm_adjust_mmio_mask(self) -> None:
        cfg = self.cfg
        mask_bit = cfg.phys_bits
        if mask_bit == cfg.amd_enc_bit:
            mask_bit += 1
        mask = (rsvd_bits(mask_bit, 51) | PT_PRESENT_MASK) if mask_bit < 52 else 0
        self.set_mmio_spte_mask(mask, mask, self.layout.acc_write | self.layout.acc_user)

    def vendor_hardware_setup(self) -> None:
        cfg = self.cfg
        if cfg.cpu_vendor == "intel":
            if cfg.mmu == "ept":
                self.set_ept_masks()
            self.vmx_setup_me_spte_mask()
        else:
            self.set_me_spte_mask(cfg.host_sme_mask, cfg.host_sme_mask)
            if cfg.amd_mem_encrypt:
                self.svm_adjust_mmio_mask()

    def max_huge_page_level(self) -> int:
        cfg = self.cfg
        if cfg.mmu == "shadow":
            return 3 if cfg.gbpages else 2
        return cfg.tdp_huge_page_level

    def freeze(self) -> Host:
        cfg = self.cfg
        host = Host(
            config=cfg,
            layout=self.layout,
            kvm_ad_enabled=self.kvm_ad_enabled,
            shadow_present_mask=self.present_mask,
            shadow_user_mask=self.user_mask,
            shadow_x_mask=self.x_mask,
            shadow_xu_mask=self.xu_mask,
            shadow_nx_mask=self.nx_mask,
            shadow_accessed_mask=self.accessed_mask,
            shadow_dirty_mask=self.dirty_mask,
            shadow_acc_track_mask=self.acc_track_mask,
            shadow_host_writable_mask=self.host_writable_mask,
            shadow_mmu_writable_mask=self.mmu_writable_mask,
            shadow_me_value=self.me_value,
            shadow_me_mask=self.me_mask,
            shadow_nonpresent_or_rsvd_mask=self.nonpresent_or_rsvd_mask,
            shadow_nonpresent_or_rsvd_lower_gfn_mask=self.lower_gfn_mask,
            shadow_mmio_value=self.mmio_value,
            shadow_mmio_mask=self.mmio_mask,
            shadow_mmio_access_mask=self.mmio_access_mask,
            allow_mmio_caching=self.allow_mmio_caching,
            enable_mmio_caching=self.enable_mmio_caching,
            spte_base_addr_mask=SPTE_BASE_ADDR_MASK & ~cfg.host_sme_mask,
            has_get_mt_mask=cfg.mmu == "ept",
            max_huge_page_level=self.max_huge_page_level(),
            sev_es_allowed=(
                cfg.cpu_vendor == "amd" and cfg.mmu == "npt" and self.enable_mmio_caching
            ),
            tdx_allowed=(
                cfg.cpu_vendor == "intel"
                and cfg.mmu == "ept"
                and cfg.tdp_mmu
                and cfg.ad_bits
                and self.enable_mmio_caching
            ),
            setup_warnings=tuple(self.warnings),
        )
        if cfg.tdp_enabled:
            host = replace(host, rsvd=build_tdp_rsvd_table(host))
        return host


def derive_host(cfg: HostConfig) -> Host:
    """Run the module-load steps of spec 2.1-2.7 in order and freeze the result."""
    cfg.validate()
    setup = _Setup(cfg)
    setup.reset_all_pte_masks()
    setup.vendor_hardware_setup()
    return setup.freeze()


def check_u64(value: int, field_name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not fits_u64(value):
        raise InvalidInput("must be an unsigned 64-bit integer", field=field_name)
    return value
