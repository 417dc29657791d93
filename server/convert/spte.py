"""StreamSptes and DecodeSpte: dump requests, packed chunks, decoded values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kvmmu.v1 import common_pb2, spte_pb2
from mmu.decode import SpteDecode
from mmu.dump import SpteArrays
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
from server.config import Limits
from server.convert.memslot import gfn_range
from server.convert.packed import fill
from server.errors import FieldError
from server.names import parse_vm_name

ROOT_NAMES: Final = {common_pb2.TDP_ROOT_DIRECT: "direct", common_pb2.TDP_ROOT_MIRROR: "mirror"}


@dataclass(frozen=True, slots=True)
class DumpQuery:
    """The validated StreamSptes request, as Vm.dump takes it."""

    vm_id: str
    start: int
    end: int | None
    level: int | None
    only_present: bool
    include_nonleaf: bool
    root: str | None
    chunk_size: int


def check_level(present: bool, level: int, field: str = "level") -> int | None:
    if not present:
        return None
    if not 1 <= level <= 5:
        raise FieldError("must be 1..5", field=field)
    return level


def dump_query(request: spte_pb2.StreamSptesRequest, limits: Limits) -> DumpQuery:
    vm_id = parse_vm_name(request.name)
    start, end = 0, None
    if request.HasField("gfn_range"):
        start, end = gfn_range(request.gfn_range, "gfn_range")
    if request.root not in (common_pb2.TDP_ROOT_UNSPECIFIED, *ROOT_NAMES):
        raise FieldError(f"unknown root {request.root}", field="root")
    hint = request.chunk_size or limits.default_chunk_size
    return DumpQuery(
        vm_id=vm_id,
        start=start,
        end=end,
        level=check_level(request.HasField("level"), request.level),
        only_present=request.only_present,
        include_nonleaf=request.include_non_leaf,
        root=ROOT_NAMES.get(request.root),
        chunk_size=min(hint, limits.max_chunk_size),
    )


def chunk_to_proto(part: SpteArrays) -> spte_pb2.StreamSptesResponse:
    """One chunk; the model's tree numbers (1 direct, 2 mirror) are TdpRoot's values."""
    msg = spte_pb2.StreamSptesResponse()
    fill(
        msg,
        small={"levels": part.levels, "roots": part.trees},
        wide={"gfns": part.gfns, "values": part.values},
    )
    return msg


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
            msg.mmio.generation_valid = check_mmio_spte(host.layout, value, generation).valid
    return msg
