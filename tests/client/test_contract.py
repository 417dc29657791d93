"""The client's types follow the proto contract: same fields, same enum values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass

import client
from client._convert import ENUMS, MESSAGES, from_proto
from kvmmu.v1 import service_pb2

POOL = descriptor_pool.Default()


@pytest.mark.parametrize("full_name", sorted(MESSAGES))
def test_dataclass_has_exactly_the_proto_fields(full_name: str) -> None:
    descriptor = POOL.FindMessageTypeByName(full_name)
    real_oneofs = [o for o in descriptor.oneofs if o.name != f"_{o.fields[0].name}"]
    in_oneof = {f.name for o in real_oneofs for f in o.fields}
    proto_fields = [f.name for f in descriptor.fields if f.name not in in_oneof]
    proto_fields += [o.name for o in real_oneofs]
    names = [f.name for f in dataclasses.fields(MESSAGES[full_name]) if f.name != "proto"]
    assert sorted(names) == sorted(proto_fields)
    empty = GetMessageClass(descriptor)()
    assert from_proto(MESSAGES[full_name], empty).proto is empty


@pytest.mark.parametrize("full_name", sorted(ENUMS))
def test_enum_has_the_proto_values(full_name: str) -> None:
    descriptor = POOL.FindEnumTypeByName(full_name)
    assert sorted(v.number for v in descriptor.values) == sorted(m.value for m in ENUMS[full_name])


def test_every_response_of_the_service_has_a_client_type() -> None:
    special = {
        "google.protobuf.Empty",
        "kvmmu.v1.StreamSptesResponse",
        "kvmmu.v1.BatchFaultResponse",
    }
    for method in service_pb2.DESCRIPTOR.services_by_name["MmuService"].methods:
        name = method.output_type.full_name
        assert name in MESSAGES or name in special or name.startswith("kvmmu.v1.List"), name


def test_every_rpc_has_a_client_method() -> None:
    methods = service_pb2.DESCRIPTOR.services_by_name["MmuService"].methods
    snake = {
        "GetHost": "get_host", "ListHostProfiles": "list_host_profiles", "CreateVm": "create_vm",
        "GetVm": "get_vm", "ListVms": "list_vms", "UpdateVm": "update_vm", "DeleteVm": "delete_vm",
        "SetMmioValue": "set_mmio_value", "GetVmStats": "get_vm_stats",
        "SetMemslot": "set_memslot", "GetMemslot": "get_memslot",
        "DeleteMemslot": "delete_memslot", "ListMemslots": "list_memslots",
        "SetMemoryAttributes": "set_memory_attributes", "Fault": "fault",
        "BatchFault": "batch_fault", "StreamSptes": "stream_sptes", "DecodeSpte": "decode_spte",
        "ZapSptes": "zap_sptes", "GetDirtyLog": "get_dirty_log", "AgeSptes": "age_sptes",
        "WatchEvents": "watch_events",
    }  # fmt: skip
    assert sorted(m.name for m in methods) == sorted(snake)
    for name in snake.values():
        method = getattr(client.Client, name)
        assert method.__doc__, name


def test_the_package_is_typed() -> None:
    assert (Path(client.__file__).parent / "py.typed").exists()
