"""Host, HostConfig, HostGlobals and HostProfile messages from mmu.host / mmu.profiles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from kvmmu.v1 import host_pb2, vm_pb2
from mmu.host import Host, HostConfig, derive_host
from mmu.profiles import Profile
from mmu.vmtypes import VmType, model_limit_reason, unsupported_reason

LAYOUTS: Final = {"v6": host_pb2.KERNEL_LAYOUT_V6, "mbec": host_pb2.KERNEL_LAYOUT_MBEC}
VENDORS: Final = {"intel": host_pb2.CPU_VENDOR_INTEL, "amd": host_pb2.CPU_VENDOR_AMD}
MMU_KINDS: Final = {
    "ept": host_pb2.MMU_KIND_EPT,
    "npt": host_pb2.MMU_KIND_NPT,
    "shadow": host_pb2.MMU_KIND_SHADOW,
}
_ENUM_FIELDS: Final[dict[str, Mapping[str, int]]] = {
    "kernel_layout": LAYOUTS,
    "cpu_vendor": VENDORS,
    "mmu": MMU_KINDS,
}


def vm_type_to_proto(vm_type: VmType) -> vm_pb2.VmType.ValueType:
    return vm_pb2.VmType.ValueType(int(vm_type) + 1)


def config_to_proto(cfg: HostConfig) -> host_pb2.HostConfig:
    msg = host_pb2.HostConfig()
    for name, value in cfg.to_dict().items():
        if name in _ENUM_FIELDS:
            setattr(msg, name, _ENUM_FIELDS[name][value])
        else:
            setattr(msg, name, value)
    return msg


def globals_to_proto(host: Host) -> host_pb2.HostGlobals:
    msg = host_pb2.HostGlobals(
        allow_mmio_caching=host.allow_mmio_caching, kvm_mmu_max_gfn=host.kvm_mmu_max_gfn
    )
    for name, value in host.derived_dict().items():
        if isinstance(value, list):
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    return msg


def vm_type_support(host: Host) -> list[host_pb2.VmTypeSupport]:
    out = []
    for vm_type in VmType:
        reason = model_limit_reason(host) or unsupported_reason(host, vm_type)
        out.append(
            host_pb2.VmTypeSupport(
                vm_type=vm_type_to_proto(vm_type),
                supported=reason is None,
                unsupported_reason=reason or "",
            )
        )
    return out


def host_to_proto(host: Host, profile: str, overridden: list[str]) -> host_pb2.Host:
    return host_pb2.Host(
        name="host",
        profile=f"hostProfiles/{profile}",
        overridden_fields=overridden,
        config=config_to_proto(host.config),
        globals=globals_to_proto(host),
        vm_types=vm_type_support(host),
    )


def profile_to_proto(profile: Profile) -> host_pb2.HostProfile:
    host = derive_host(profile.config)
    return host_pb2.HostProfile(
        name=f"hostProfiles/{profile.name}",
        description=profile.description,
        config=config_to_proto(profile.config),
        globals=globals_to_proto(host),
        vm_types=vm_type_support(host),
    )
