"""Event messages from the model's event tuples (mmu.events), with their ftrace text."""

from __future__ import annotations

from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from kvmmu.v1 import common_pb2, events_pb2
from mmu.events import EVENT_FIELDS
from mmu.fault import Outcome
from mmu.fault_batch import OUTCOME_CODES
from mmu.host import Host
from mmu.trace import format_event

# Model field name -> proto field name where they differ.
_RENAMES: Final = {"mirror": "is_mirror", "errno": "errno_value", "gpa": "cr2_or_gpa"}
_ONEOF: Final = {f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["fields"].fields}


def outcome_code(outcome: Outcome | str | None) -> common_pb2.FaultOutcome.ValueType:
    """FaultOutcome number of a model outcome (KVM's RET_PF_* or errno)."""
    if outcome is None:
        return common_pb2.FAULT_OUTCOME_UNSPECIFIED
    return common_pb2.FaultOutcome.ValueType(OUTCOME_CODES.get(Outcome(outcome), 0))


def _fill(sub: Message, names: tuple[str, ...], values: tuple[Any, ...], host: Host) -> None:
    fields = sub.DESCRIPTOR.fields_by_name
    for model_name, value in zip(names, values, strict=True):
        name = _RENAMES.get(model_name, model_name)
        field = fields.get(name)
        if field is None:
            continue
        if name == "ret":
            setattr(sub, name, outcome_code(value))
        elif name == "access" and sub.DESCRIPTOR.name == "KvmMmuSpteRequestedEvent":
            if host.layout.trace_spte_requested_has_access:
                setattr(sub, name, int(value))
        elif field.type == FieldDescriptor.TYPE_BOOL:
            setattr(sub, name, bool(value))
        else:
            setattr(sub, name, int(value))


def event_to_proto(host: Host, sequence: int, event: tuple[Any, ...]) -> events_pb2.Event:
    name = event[0]
    msg = events_pb2.Event(sequence=sequence, name=name, text=format_event(host, event))
    if name in _ONEOF:
        sub = getattr(msg, name)
        sub.SetInParent()
        _fill(sub, EVENT_FIELDS.get(name, ()), tuple(event[1:]), host)
        if name == "kvm_mmu_get_page":
            sub.created = True
    return msg


def warning_event(name: str) -> events_pb2.Event:
    """A KVM WARN the model reproduced (not part of the VM's numbered event log)."""
    text = f"WARN: {name}"
    return events_pb2.Event(
        name="warning",
        text=text,
        warning=events_pb2.WarningEvent(name=name, message=name.replace("_", " ")),
    )
