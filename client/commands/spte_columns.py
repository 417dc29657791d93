"""The per-SPTE columns of `kvmmu sptes` (kind, pfn, access letters, A/D, MMIO gen).

StreamSptes sends raw values; reading them needs the host's masks and the
VM's MMIO value. Rather than re-derive KVM's predicates here, this applies
mmu's own (spte.h / mmio.c names) to the server's host configuration, fetched
with GetHost: mmu is a pure library, and no VM state is touched locally.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Final, NamedTuple

from client.enums import ProtoEnum, SpteKind
from client.types import Host as ServerHost
from client.types import Vm
from mmu.host import Host, HostConfig, derive_host
from mmu.mmio import get_mmio_spte_generation, is_mmio_spte
from mmu.spte import (
    is_access_track_spte,
    is_accessed_spte,
    is_dirty_spte,
    is_frozen_spte,
    is_last_spte,
    is_shadow_present_pte,
    spte_ad_enabled,
    spte_to_pfn,
)
from mmu.trace import spte_access_letters
from mmu.vmtypes import VmType, VmView

CHECKED_GLOBALS: Final = (
    "shadow_present_mask",
    "shadow_mmio_mask",
    "shadow_accessed_mask",
    "shadow_dirty_mask",
    "shadow_x_mask",
    "shadow_nx_mask",
    "shadow_user_mask",
    "spte_base_addr_mask",
)


class SpteColumns(NamedTuple):
    """What the table shows about one SPTE besides gfn, level and value."""

    kind: SpteKind
    pfn: int | None
    access: str
    ad: str
    mmio_gen: int | None


def model_host(server: ServerHost) -> tuple[Host, list[str]]:
    """The mmu Host for the server's configuration, and the globals that disagree (if any)."""
    values: dict[str, Any] = {}
    for f in fields(HostConfig):
        value = getattr(server.config, f.name)
        values[f.name] = value.label if isinstance(value, ProtoEnum) else value
    host = derive_host(HostConfig(**values))
    differ = [
        name for name in CHECKED_GLOBALS if getattr(host, name) != getattr(server.globals, name)
    ]
    return host, differ


def vm_view(host: Host, vm: Vm) -> VmView:
    """The parts of the VM the SPTE predicates read."""
    return VmView(host=host, shadow_mmio_value=vm.mmio_value, vm_type=VmType(vm.vm_type.kvm_type))


def _ad(host: Host, value: int) -> str:
    if not spte_ad_enabled(host.layout, value):
        return "tracked" if is_access_track_spte(host, value) else "off"
    return ("A" if is_accessed_spte(host, value) else "-") + (
        "D" if is_dirty_spte(host, value) else "-"
    )


def columns(view: VmView, value: int, level: int) -> SpteColumns:
    """Kind, pfn, rwxu letters, A/D state and MMIO generation of one SPTE."""
    host = view.host
    if is_frozen_spte(host.layout, value):
        return SpteColumns(SpteKind.FROZEN, None, "", "", None)
    if is_mmio_spte(view, value):
        return SpteColumns(
            SpteKind.MMIO, None, "", "", get_mmio_spte_generation(host.layout, value)
        )
    if not is_shadow_present_pte(value):
        return SpteColumns(SpteKind.NON_PRESENT, None, "", "", None)
    if not is_last_spte(value, level):
        return SpteColumns(SpteKind.NON_LEAF, spte_to_pfn(host, value), "", "", None)
    access = spte_access_letters(host, value)
    return SpteColumns(SpteKind.LEAF, spte_to_pfn(host, value), access, _ad(host, value), None)
