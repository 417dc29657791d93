"""StreamSptes and DecodeSpte: dump requests, packed chunks, decoded values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kvmmu.v1 import common_pb2, spte_pb2
from mmu.dump import SpteArrays
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
