"""Named host profiles: ready-made `HostConfig`s for common hosts.

Each profile documents its numbers and the real CPU generation it
resembles. Any field can be overridden (`host_config(name, **changes)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from mmu.errors import InvalidInput
from mmu.host import Host, HostConfig, derive_host


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    config: HostConfig


PROFILES: Final = {
    p.name: p
    for p in (
        Profile(
            "intel-ept",
            "Intel server with EPT and A/D bits, not L1TF-affected (Ice Lake-SP class): "
            "phys_bits = MAXPHYADDR = cache_bits = 46, 4-level EPT with 1G pages, "
            "execute-only EPT, MMIO caching and the TDP MMU on. The default.",
            HostConfig(),
        ),
        Profile(
            "intel-ept-noad",
            "Same Intel host with EPT A/D bits disabled (kvm_intel.eptad=0, or a nested "
            "hypervisor without them): SPTEs carry A/D type 'disabled' and aging uses "
            "access tracking.",
            HostConfig(ad_bits=False),
        ),
        Profile(
            "intel-l1tf",
            "L1TF-affected Intel server (Skylake-SP / Cascade Lake class): 46 physical "
            "and cache bits, so MMIO SPTEs relocate GPA bits 41..45 five bits up; NX huge "
            "pages (iTLB multihit mitigation) on.",
            HostConfig(l1tf=True, nx_huge_pages=True),
        ),
        Profile(
            "intel-tdx",
            "TDX-capable Intel server (Sapphire/Emerald Rapids class): MAXPHYADDR 52 with "
            "6 TME-MK/TDX key-ID bits (phys_bits 46, shadow_me_mask bits 46..51), 5-level "
            "EPT with A/D bits, MMIO caching and the TDP MMU on, so TDX VMs are offered.",
            HostConfig(
                phys_bits=46, maxphyaddr=52, cache_bits=52, max_tdp_level=5, tdx_module=True
            ),
        ),
        Profile(
            "amd-npt",
            "AMD host with NPT and no memory encryption (EPYC Milan class with SME off): "
            "48 physical bits, 4-level NPT, 1G pages; MMIO pattern = bit 51 + P.",
            HostConfig(
                cpu_vendor="amd",
                mmu="npt",
                ept_exec_only=False,
                phys_bits=48,
                maxphyaddr=48,
                cache_bits=48,
            ),
        ),
        Profile(
            "amd-sev-snp",
            "AMD host with SME active and SEV/SEV-ES/SNP (EPYC Rome/Milan class): "
            "MAXPHYADDR 48, C-bit 47, physical width reduced by 5 to 43, so the MMIO "
            "pattern is bits 43..51 + P and leaf SPTEs carry the C-bit.",
            HostConfig(
                cpu_vendor="amd",
                mmu="npt",
                ept_exec_only=False,
                phys_bits=43,
                maxphyaddr=48,
                cache_bits=43,
                amd_mem_encrypt=True,
                amd_enc_bit=47,
                host_sme_mask=1 << 47,
            ),
        ),
    )
}

DEFAULT_PROFILE: Final = "intel-ept"


def host_config(profile: str = DEFAULT_PROFILE, **overrides: Any) -> HostConfig:
    """The profile's inputs with any field overridden; validated."""
    try:
        base = PROFILES[profile].config
    except KeyError:
        raise InvalidInput(
            f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}", field="profile"
        ) from None
    cfg = base.override(**overrides)
    cfg.validate()
    return cfg


def host_from_profile(profile: str = DEFAULT_PROFILE, **overrides: Any) -> Host:
    return derive_host(host_config(profile, **overrides))
