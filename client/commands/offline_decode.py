"""DecodeSpte without a server: mmu.decode for a host profile, as a DecodeSpteResponse.

The CLI's `decode --profile` builds the same message the server would send,
so its human and `--json` output are those of the online path.
"""

from __future__ import annotations

from client._convert import from_proto
from client.results import SpteDecoding
from kvmmu.v1 import spte_pb2
from mmu.decode import SpteDecode, decode_spte
from mmu.host import Host
from mmu.mmio import check_mmio_spte
from mmu.profiles import host_from_profile
from mmu.spte import (
    is_access_track_spte,
    is_accessed_spte,
    is_dirty_spte,
    is_executable_pte,
    is_frozen_spte,
    is_large_pte,
    is_last_spte,
    is_mmu_writable_spte,
    is_shadow_present_pte,
    is_writable_pte,
    spte_ad_enabled,
    spte_ad_need_write_protect,
)
from mmu.vmtypes import VmType, VmView


def _predicates(host: Host, value: int, level: int | None) -> spte_pb2.SptePredicates:
    layout = host.layout
    return spte_pb2.SptePredicates(
        is_shadow_present_pte=is_shadow_present_pte(value),
        is_frozen_spte=is_frozen_spte(layout, value),
        is_last_spte=is_last_spte(value, level or 1),
        is_large_pte=is_large_pte(value),
        is_writable_pte=is_writable_pte(value),
        is_mmu_writable_spte=is_mmu_writable_spte(host, value),
        is_host_writable=bool(value & host.shadow_host_writable_mask),
        is_accessed_spte=is_accessed_spte(host, value),
        is_dirty_spte=is_dirty_spte(host, value),
        is_executable_pte=is_executable_pte(host, value),
        spte_ad_enabled=spte_ad_enabled(layout, value),
        spte_ad_need_write_protect=spte_ad_need_write_protect(layout, value),
        is_access_track_spte=is_access_track_spte(host, value),
    )


def _to_proto(host: Host, d: SpteDecode, generation: int | None) -> spte_pb2.DecodeSpteResponse:
    msg = spte_pb2.DecodeSpteResponse(
        value=d.value,
        kind=spte_pb2.SpteKind.Value(f"SPTE_KIND_{d.kind.name}"),
        fields=[
            spte_pb2.SpteField(
                name=f.name,
                lsb=f.lsb,
                msb=f.msb,
                value=f.value,
                kind=spte_pb2.SpteFieldKind.Value(f"SPTE_FIELD_KIND_{f.kind.name}"),
                meaning=f.meaning,
            )
            for f in d.fields
        ],
        reasons=d.reasons,
        verdict=d.verdict,
        summary=d.summary,
        access=d.access or "",
        is_mmio_for_vm=d.is_mmio_for_vm,
        is_mmio_for_host_value=(d.value & host.shadow_mmio_mask) == host.shadow_mmio_value,
        misconfig=d.misconfig,
        predicates=_predicates(host, d.value, d.level),
    )
    if d.level is not None:
        msg.level = d.level
    if d.pfn is not None:
        msg.pfn = d.pfn
    if d.reserved_bits is not None:
        msg.reserved_bits = d.reserved_bits
    if d.mmio_gfn is not None:
        msg.mmio.gfn = d.mmio_gfn
        msg.mmio.access = d.mmio_access or 0
        msg.mmio.generation = d.mmio_generation or 0
        if generation is not None:
            msg.mmio.generation_valid = check_mmio_spte(host.layout, d.value, generation).valid
    return msg


def decode_offline(
    value: int,
    profile: str,
    *,
    mmio_value: int | None,
    vm_type: int,
    generation: int | None,
    level: int | None,
) -> SpteDecoding:
    """Decode `value` for a host profile and a VM of `vm_type` (KVM number) or `mmio_value`."""
    host = host_from_profile(profile)
    view = VmView.for_type(host, VmType(vm_type))
    if mmio_value is not None:
        view = VmView(host=host, shadow_mmio_value=mmio_value, vm_type=view.vm_type)
    decoded = decode_spte(view, value, level)
    return from_proto(SpteDecoding, _to_proto(host, decoded, generation))
