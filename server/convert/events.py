"""Event messages from the model's event tuples (mmu.events), with their ftrace text."""

from __future__ import annotations

from collections.abc import Callable
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


Converter = Callable[[Any], Any]


def _plan(name: str, host: Host) -> tuple[type[Message], tuple[tuple[int, str, Converter], ...]]:
    """How the model's event tuple fills the tracepoint's proto message: built once."""
    sub_type = type(getattr(events_pb2.Event(), name))
    fields = sub_type.DESCRIPTOR.fields_by_name
    steps: list[tuple[int, str, Converter]] = []
    for i, model_name in enumerate(EVENT_FIELDS.get(name, ())):
        proto_name = _RENAMES.get(model_name, model_name)
        field = fields.get(proto_name)
        if field is None:
            continue
        if proto_name == "ret":
            steps.append((i, proto_name, outcome_code))
        elif proto_name == "access" and sub_type.DESCRIPTOR.name == "KvmMmuSpteRequestedEvent":
            if host.layout.trace_spte_requested_has_access:
                steps.append((i, proto_name, int))
        elif field.type == FieldDescriptor.TYPE_BOOL:
            steps.append((i, proto_name, bool))
        else:
            steps.append((i, proto_name, int))
    return sub_type, tuple(steps)


_PLANS: dict[tuple[int, str], tuple[type[Message], tuple[tuple[int, str, Converter], ...]]] = {}


def event_to_proto(host: Host, sequence: int, event: tuple[Any, ...]) -> events_pb2.Event:
    name = event[0]
    text = format_event(host, event)
    if name not in _ONEOF:
        return events_pb2.Event(sequence=sequence, name=name, text=text)
    key = (id(host), name)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _plan(name, host)
    sub_type, steps = plan
    values = {proto_name: convert(event[1 + i]) for i, proto_name, convert in steps}
    if name == "kvm_mmu_get_page":
        values["created"] = True
    oneof: dict[str, Any] = {name: sub_type(**values)}
    return events_pb2.Event(sequence=sequence, name=name, text=text, **oneof)


def warning_event(name: str) -> events_pb2.Event:
    """A KVM WARN the model reproduced (not part of the VM's numbered event log)."""
    text = f"WARN: {name}"
    return events_pb2.Event(
        name="warning",
        text=text,
        warning=events_pb2.WarningEvent(name=name, message=name.replace("_", " ")),
    )
