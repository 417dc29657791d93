"""A model decode (mmu.decode.SpteDecode) as a DecodeSpteResponse."""

from __future__ import annotations

from kvmmu.v1 import spte_pb2
from mmu.decode import SpteDecode
from mmu.host import Host
from mmu.mmio import check_mmio_spte
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


def predicates(host: Host, value: int, level: int | None) -> spte_pb2.SptePredicates:
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


def decode_to_proto(
    host: Host, decoded: SpteDecode, generation: int | None
) -> spte_pb2.DecodeSpteResponse:
    value = decoded.value
    msg = spte_pb2.DecodeSpteResponse(
        value=value,
        kind=spte_pb2.SpteKind.Value(f"SPTE_KIND_{decoded.kind.name}"),
        fields=[
            spte_pb2.SpteField(
                name=f.name,
                lsb=f.lsb,
                msb=f.msb,
                value=f.value,
                kind=spte_pb2.SpteFieldKind.Value(f"SPTE_FIELD_KIND_{f.kind.name}"),
                meaning=f.meaning,
            )
            for f in decoded.fields
        ],
        reasons=decoded.reasons,
        verdict=decoded.verdict,
        summary=decoded.summary,
        access=decoded.access or "",
        is_mmio_for_vm=decoded.is_mmio_for_vm,
        is_mmio_for_host_value=(value & host.shadow_mmio_mask) == host.shadow_mmio_value,
        misconfig=decoded.misconfig,
        predicates=predicates(host, value, decoded.level),
    )
    if decoded.level is not None:
        msg.level = decoded.level
    if decoded.pfn is not None:
        msg.pfn = decoded.pfn
    if decoded.reserved_bits is not None:
        msg.reserved_bits = decoded.reserved_bits
    if decoded.mmio_gfn is not None:
        msg.mmio.gfn = decoded.mmio_gfn
        msg.mmio.access = decoded.mmio_access or 0
        msg.mmio.generation = decoded.mmio_generation or 0
        if generation is not None:
            check = check_mmio_spte(host.layout, value, generation)
            msg.mmio.generation_valid = check.valid
            if not check.valid:
                msg.verdict += (
                    f"; stale: MMIO generation {check.spte_gen:#x}, the VM's is "
                    f"{check.kvm_gen:#x} (the next fault on it replaces it)"
                )
    return msg
