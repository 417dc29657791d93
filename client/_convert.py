"""Proto messages -> the client's frozen dataclasses, in one place.

Driven by the proto descriptors and two tables (message -> dataclass, enum ->
Python enum): a dataclass field takes the proto field of the same name (or a
oneof of that name); a field annotated `X | None` is None when the proto
field has presence and is unset; repeated fields become tuples, enums their
Python enum, Timestamps aware UTC datetimes. Plans are built once per class.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from datetime import UTC
from functools import cache
from typing import Any, Final, TypeVar, Union, cast, get_args, get_origin, get_type_hints

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from client import enums, events, results
from client import types as t
from kvmmu.v1 import fault_pb2, spte_pb2

T = TypeVar("T")
Getter = Callable[[Any], Any]

ENUMS: Final[dict[str, type[enums.ProtoEnum]]] = {
    "kvmmu.v1.TdpRoot": enums.TdpRoot,
    "kvmmu.v1.FaultOutcome": enums.FaultOutcome,
    "kvmmu.v1.KernelLayout": enums.KernelLayout,
    "kvmmu.v1.CpuVendor": enums.CpuVendor,
    "kvmmu.v1.MmuKind": enums.MmuKind,
    "kvmmu.v1.VmType": enums.VmType,
    "kvmmu.v1.VmView": enums.VmView,
    "kvmmu.v1.BackingPageSize": enums.BackingPageSize,
    "kvmmu.v1.MemslotChange": enums.MemslotChange,
    "kvmmu.v1.MemslotChangeResult": enums.MemslotChangeResult,
    "kvmmu.v1.MemslotZap": enums.MemslotZap,
    "kvmmu.v1.MemoryAttributesResult": enums.MemoryAttributesResult,
    "kvmmu.v1.SpteKind": enums.SpteKind,
    "kvmmu.v1.SpteFieldKind": enums.SpteFieldKind,
}

MESSAGES: Final[dict[str, type]] = {
    "kvmmu.v1.HostConfig": t.HostConfig,
    "kvmmu.v1.HostGlobals": t.HostGlobals,
    "kvmmu.v1.VmTypeSupport": t.VmTypeSupport,
    "kvmmu.v1.Host": t.Host,
    "kvmmu.v1.HostProfile": t.HostProfile,
    "kvmmu.v1.VmStats": t.VmStats,
    "kvmmu.v1.Vm": t.Vm,
    "kvmmu.v1.SetMmioValueResponse": t.SetMmioValueResult,
    "kvmmu.v1.Memslot": t.Memslot,
    "kvmmu.v1.MemslotChangeOutcome": t.MemslotChangeOutcome,
    "kvmmu.v1.SetMemslotResponse": t.SetMemslotResult,
    "kvmmu.v1.DeleteMemslotResponse": t.DeleteMemslotResult,
    "kvmmu.v1.SetMemoryAttributesResponse": t.SetMemoryAttributesResult,
    "kvmmu.v1.MemoryFault": results.MemoryFault,
    "kvmmu.v1.ExplanationStep": results.ExplanationStep,
    "kvmmu.v1.FaultResponse": results.FaultResult,
    "kvmmu.v1.SpteField": results.SpteField,
    "kvmmu.v1.MmioSpteInfo": results.MmioSpteInfo,
    "kvmmu.v1.SptePredicates": results.SptePredicates,
    "kvmmu.v1.DecodeSpteResponse": results.SpteDecoding,
    "kvmmu.v1.ZapSptesResponse": results.ZapResult,
    "kvmmu.v1.GetDirtyLogResponse": results.DirtyLog,
    "kvmmu.v1.AgeSptesResponse": results.AgeResult,
    "kvmmu.v1.MarkMmioSpteEvent": events.MarkMmioSpteEvent,
    "kvmmu.v1.HandleMmioPageFaultEvent": events.HandleMmioPageFaultEvent,
    "kvmmu.v1.CheckMmioSpteEvent": events.CheckMmioSpteEvent,
    "kvmmu.v1.KvmMmuSetSpteEvent": events.KvmMmuSetSpteEvent,
    "kvmmu.v1.KvmMmuSpteRequestedEvent": events.KvmMmuSpteRequestedEvent,
    "kvmmu.v1.KvmTdpMmuSpteChangedEvent": events.KvmTdpMmuSpteChangedEvent,
    "kvmmu.v1.FastPageFaultEvent": events.FastPageFaultEvent,
    "kvmmu.v1.KvmMmuSplitHugePageEvent": events.KvmMmuSplitHugePageEvent,
    "kvmmu.v1.KvmMmuGetPageEvent": events.KvmMmuGetPageEvent,
    "kvmmu.v1.KvmMmuPrepareZapPageEvent": events.KvmMmuPrepareZapPageEvent,
    "kvmmu.v1.KvmMmuZapAllFastEvent": events.KvmMmuZapAllFastEvent,
    "kvmmu.v1.WarningEvent": events.WarningEvent,
    "kvmmu.v1.Event": events.Event,
    "kvmmu.v1.WatchEventsResponse": events.EventBatch,
}


def from_proto(cls: type[T], msg: Message) -> T:
    """The dataclass `cls` holding `msg` (which must be the message `cls` stands for)."""
    plan = _plan(cast(type, cls), msg.DESCRIPTOR)
    values = {name: get(msg) for name, get in plan}
    make = cast(Callable[..., T], cls)
    return make(**values, proto=msg)


def _message(msg: Message) -> Any:
    if isinstance(msg, Timestamp):
        return msg.ToDatetime(tzinfo=UTC)
    name = msg.DESCRIPTOR.full_name
    if name not in MESSAGES:
        raise TypeError(f"no client type for {name}")
    return from_proto(MESSAGES[name], msg)


def _is_optional(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)


def _value(fd: FieldDescriptor) -> Getter:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _message
    if fd.type == FieldDescriptor.TYPE_ENUM:
        assert fd.enum_type is not None
        return ENUMS[fd.enum_type.full_name]
    return lambda value: value


def _field_getter(fd: FieldDescriptor, optional: bool) -> Getter:
    name, convert = fd.name, _value(fd)
    if fd.is_repeated:
        return lambda msg: tuple(convert(v) for v in getattr(msg, name))
    if optional and fd.has_presence:
        return lambda msg: convert(getattr(msg, name)) if msg.HasField(name) else None
    return lambda msg: convert(getattr(msg, name))


def _oneof_getter(name: str) -> Getter:
    def get(msg: Message) -> Any:
        case = msg.WhichOneof(name)
        return None if case is None else _message(getattr(msg, case))

    return get


@cache
def _plan(cls: type, descriptor: Descriptor) -> tuple[tuple[str, Getter], ...]:
    hints = get_type_hints(cls)
    plan: list[tuple[str, Getter]] = []
    for name in getattr(cls, "__dataclass_fields__", {}):
        if name == "proto":
            continue
        if name in descriptor.oneofs_by_name:
            plan.append((name, _oneof_getter(name)))
        else:
            fd = descriptor.fields_by_name[name]
            plan.append((name, _field_getter(fd, _is_optional(hints[name]))))
    return tuple(plan)


def spte_chunk(msg: spte_pb2.StreamSptesResponse) -> results.SpteChunk:
    """A StreamSptes message as numpy arrays."""
    return results.SpteChunk(
        roots=np.array(msg.roots, dtype=np.uint32),
        gfns=np.array(msg.gfns, dtype=np.uint64),
        levels=np.array(msg.levels, dtype=np.uint32),
        values=np.array(msg.values, dtype=np.uint64),
        proto=msg,
    )


def batch_fault(msg: fault_pb2.BatchFaultResponse) -> results.BatchFaultResult:
    """A BatchFault response as numpy arrays."""
    return results.BatchFaultResult(
        outcomes=np.array(msg.outcomes, dtype=np.uint32),
        sptes=np.array(msg.sptes, dtype=np.uint64),
        levels=np.array(msg.levels, dtype=np.uint32),
        gfns=np.array(msg.gfns, dtype=np.uint64),
        proto=msg,
    )
