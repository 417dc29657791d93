"""Hypothesis strategies over hosts, VMs and SPTE inputs."""

from __future__ import annotations

from hypothesis import strategies as st

from mmu.host import Host
from mmu.profiles import PROFILES, host_from_profile

_HOSTS: dict[tuple[str, str], Host] = {}


def host_for(profile: str, layout: str) -> Host:
    key = (profile, layout)
    if key not in _HOSTS:
        _HOSTS[key] = host_from_profile(profile, kernel_layout=layout)
    return _HOSTS[key]


hosts = st.builds(host_for, st.sampled_from(sorted(PROFILES)), st.sampled_from(["v6", "mbec"]))
ept_hosts = st.builds(
    host_for,
    st.sampled_from(["intel-ept", "intel-ept-noad", "intel-l1tf", "intel-tdx"]),
    st.sampled_from(["v6", "mbec"]),
)
u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


def mmio_gfns(host: Host) -> st.SearchStrategy[int]:
    """GFNs whose GPA bits all survive get_mmio_spte_gfn()."""
    keep = host.shadow_nonpresent_or_rsvd_lower_gfn_mask | host.shadow_nonpresent_or_rsvd_mask
    return st.integers(min_value=0, max_value=(1 << 40) - 1).map(lambda g: g & (keep >> 12))


def pfns(host: Host) -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=(1 << (host.config.phys_bits - 12)) - 1)
