"""The kvmmu.v1 API contract, checked on the generated descriptors.

buf (scripts/buf.sh) checks style, comments and compatibility of protos/;
these tests pin what the server and clients rely on: every RPC with its
types and streaming, UNSPECIFIED = 0 enums, KVM's numbers where the API
promises them, packed parallel arrays on the hot paths, AIP-158 pagination
and uint64 for every mask, SPTE, GPA and GFN.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor

from kvmmu.v1 import (
    common_pb2,
    events_pb2,
    fault_pb2,
    host_pb2,
    memslot_pb2,
    service_pb2,
    service_pb2_grpc,
    spte_pb2,
    vm_pb2,
)
from mmu import constants
from mmu.vmtypes import VmType

FILES: tuple[FileDescriptor, ...] = tuple(
    m.DESCRIPTOR
    for m in (
        common_pb2,
        events_pb2,
        fault_pb2,
        host_pb2,
        memslot_pb2,
        service_pb2,
        spte_pb2,
        vm_pb2,
    )
)
SERVICE = service_pb2.DESCRIPTOR.services_by_name["MmuService"]

# RPC -> (request, response, server-streaming). Requests are all kvmmu.v1.
RPCS: dict[str, tuple[str, str, bool]] = {
    "GetHost": ("GetHostRequest", "kvmmu.v1.Host", False),
    "ListHostProfiles": ("ListHostProfilesRequest", "kvmmu.v1.ListHostProfilesResponse", False),
    "CreateVm": ("CreateVmRequest", "kvmmu.v1.Vm", False),
    "GetVm": ("GetVmRequest", "kvmmu.v1.Vm", False),
    "ListVms": ("ListVmsRequest", "kvmmu.v1.ListVmsResponse", False),
    "UpdateVm": ("UpdateVmRequest", "kvmmu.v1.Vm", False),
    "DeleteVm": ("DeleteVmRequest", "google.protobuf.Empty", False),
    "SetMmioValue": ("SetMmioValueRequest", "kvmmu.v1.SetMmioValueResponse", False),
    "GetVmStats": ("GetVmStatsRequest", "kvmmu.v1.VmStats", False),
    "SetMemslot": ("SetMemslotRequest", "kvmmu.v1.SetMemslotResponse", False),
    "GetMemslot": ("GetMemslotRequest", "kvmmu.v1.Memslot", False),
    "DeleteMemslot": ("DeleteMemslotRequest", "kvmmu.v1.DeleteMemslotResponse", False),
    "ListMemslots": ("ListMemslotsRequest", "kvmmu.v1.ListMemslotsResponse", False),
    "SetMemoryAttributes": (
        "SetMemoryAttributesRequest",
        "kvmmu.v1.SetMemoryAttributesResponse",
        False,
    ),
    "Fault": ("FaultRequest", "kvmmu.v1.FaultResponse", False),
    "BatchFault": ("BatchFaultRequest", "kvmmu.v1.BatchFaultResponse", False),
    "StreamSptes": ("StreamSptesRequest", "kvmmu.v1.StreamSptesResponse", True),
    "DecodeSpte": ("DecodeSpteRequest", "kvmmu.v1.DecodeSpteResponse", False),
    "ZapSptes": ("ZapSptesRequest", "kvmmu.v1.ZapSptesResponse", False),
    "GetDirtyLog": ("GetDirtyLogRequest", "kvmmu.v1.GetDirtyLogResponse", False),
    "AgeSptes": ("AgeSptesRequest", "kvmmu.v1.AgeSptesResponse", False),
    "WatchEvents": ("WatchEventsRequest", "kvmmu.v1.WatchEventsResponse", True),
}

# Parallel arrays on the throughput paths: must be packed on the wire.
PACKED: tuple[tuple[type, str], ...] = (
    (fault_pb2.BatchFaultRequest, "gpas"),
    (fault_pb2.BatchFaultRequest, "error_codes"),
    (fault_pb2.BatchFaultResponse, "outcomes"),
    (fault_pb2.BatchFaultResponse, "sptes"),
    (fault_pb2.BatchFaultResponse, "levels"),
    (fault_pb2.BatchFaultResponse, "gfns"),
    (spte_pb2.StreamSptesResponse, "gfns"),
    (spte_pb2.StreamSptesResponse, "levels"),
    (spte_pb2.StreamSptesResponse, "values"),
    (spte_pb2.StreamSptesResponse, "roots"),
    (spte_pb2.GetDirtyLogResponse, "bitmap"),
    (spte_pb2.GetDirtyLogResponse, "dirty_page_offsets"),
)

HOST_INPUTS = [
    "kernel_layout",
    "cpu_vendor",
    "mmu",
    "ad_bits",
    "ept_exec_only",
    "phys_bits",
    "maxphyaddr",
    "cache_bits",
    "l1tf",
    "mmio_caching",
    "amd_mem_encrypt",
    "amd_enc_bit",
    "host_sme_mask",
    "nx_huge_pages",
    "max_tdp_level",
    "tdp_huge_page_level",
    "gbpages",
    "tdp_mmu",
    "pml",
    "eager_page_split",
    "mbec",
    "npt_gmet",
]
HOST_DERIVED = [
    "shadow_present_mask",
    "shadow_user_mask",
    "shadow_x_mask",
    "shadow_xu_mask",
    "shadow_nx_mask",
    "shadow_accessed_mask",
    "shadow_dirty_mask",
    "shadow_acc_track_mask",
    "shadow_host_writable_mask",
    "shadow_mmu_writable_mask",
    "shadow_me_value",
    "shadow_me_mask",
    "shadow_nonpresent_or_rsvd_mask",
    "shadow_nonpresent_or_rsvd_lower_gfn_mask",
    "shadow_mmio_value",
    "shadow_mmio_mask",
    "shadow_mmio_access_mask",
    "enable_mmio_caching",
    "kvm_ad_enabled",
    "spte_base_addr_mask",
    "has_get_mt_mask",
    "max_huge_page_level",
    "sev_es_allowed",
    "tdx_allowed",
    "setup_warnings",
]
VM_STATS = [
    "pf_taken",
    "pf_fixed",
    "pf_emulate",
    "pf_spurious",
    "pf_fast",
    "pf_mmio_spte_created",
    "pages_4k",
    "pages_2m",
    "pages_1g",
    "nx_lpage_splits",
    "direct_tables",
    "mirror_tables",
]

# A field with one of these names carries a 64-bit machine quantity.
U64_NAME = re.compile(r"(^|_)(mask|spte|sptes|gpa|gpas|gfn|gfns|pfn|sptep|bitmap)$")


def walk_messages(descriptors: list[Descriptor]) -> Iterator[Descriptor]:
    for desc in descriptors:
        yield desc
        yield from walk_messages(list(desc.nested_types))


def all_messages() -> list[Descriptor]:
    return [m for f in FILES for m in walk_messages(list(f.message_types_by_name.values()))]


def all_enums() -> list[EnumDescriptor]:
    enums = [e for f in FILES for e in f.enum_types_by_name.values()]
    enums += [e for m in all_messages() for e in m.enum_types]
    return enums


def upper_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def test_files_declare_package_kvmmu_v1_in_matching_directory() -> None:
    for f in FILES:
        assert f.package == "kvmmu.v1", f.name
        assert f.name.startswith("kvmmu/v1/"), f.name


def test_service_has_exactly_the_contracted_rpcs() -> None:
    assert sorted(m.name for m in SERVICE.methods) == sorted(RPCS)


@pytest.mark.parametrize("rpc", sorted(RPCS))
def test_rpc_types_and_streaming(rpc: str) -> None:
    request, response, server_streaming = RPCS[rpc]
    method = SERVICE.methods_by_name[rpc]
    assert method.input_type.full_name == f"kvmmu.v1.{request}"
    assert method.output_type.full_name == response
    assert method.server_streaming is server_streaming
    assert method.client_streaming is False
    # The generated stub and servicer expose it under the same name.
    assert hasattr(service_pb2_grpc.MmuServiceServicer, rpc)


def test_every_enum_starts_with_unspecified_zero() -> None:
    enums = all_enums()
    assert len(enums) >= 10
    for enum in enums:
        zero = enum.values_by_number.get(0)
        assert zero is not None, f"{enum.full_name} has no zero value"
        assert zero.name == f"{upper_snake(enum.name)}_UNSPECIFIED", enum.full_name
        assert enum.values[0].number == 0, f"{enum.full_name}: zero value is not first"


def test_vm_type_is_kvm_number_plus_one() -> None:
    assert len(vm_pb2.VmType.keys()) == len(VmType) + 1  # + VM_TYPE_UNSPECIFIED
    for vm_type in VmType:
        assert vm_pb2.VmType.Value(f"VM_TYPE_{vm_type.name}") == vm_type.value + 1


def test_fault_outcome_numbers_are_the_kernels() -> None:
    outcome = common_pb2.FaultOutcome
    for name in ("RETRY", "EMULATE", "WRITE_PROTECTED", "INVALID", "FIXED", "SPURIOUS"):
        assert outcome.Value(f"FAULT_OUTCOME_{name}") == getattr(constants, f"RET_PF_{name}")
    assert outcome.Value("FAULT_OUTCOME_EFAULT") == errno.EFAULT
    assert outcome.Value("FAULT_OUTCOME_EINVAL") == errno.EINVAL


@pytest.mark.parametrize(("message", "field"), PACKED, ids=lambda x: getattr(x, "__name__", x))
def test_throughput_arrays_are_packed(message: type, field: str) -> None:
    desc: FieldDescriptor = message.DESCRIPTOR.fields_by_name[field]
    assert desc.is_repeated
    assert desc.type not in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_STRING)
    assert desc.is_packed
    # On the wire: one length-delimited record (wire type 2) for the whole array,
    # raw little-endian words for fixed64 fields, one varint byte per small value else.
    encoded = message(**{field: [1, 2, 1]}).SerializeToString()
    if desc.type == FieldDescriptor.TYPE_FIXED64:
        words = b"".join(v.to_bytes(8, "little") for v in (1, 2, 1))
        assert encoded == bytes([desc.number << 3 | 2, 24]) + words
    else:
        assert encoded == bytes([desc.number << 3 | 2, 3, 1, 2, 1])


def test_batch_and_dump_arrays_are_fixed64_where_they_hold_addresses_or_sptes() -> None:
    """Wide arrays are fixed64: raw uint64 arrays on the wire (SPTEs mostly have bit 63)."""
    u64 = FieldDescriptor.TYPE_FIXED64
    batch = fault_pb2.BatchFaultResponse.DESCRIPTOR.fields_by_name
    assert [batch[f].type for f in ("sptes", "gfns")] == [u64, u64]
    request = fault_pb2.BatchFaultRequest.DESCRIPTOR.fields_by_name
    assert [request[f].type for f in ("gpas", "error_codes")] == [u64, u64]
    assert batch["outcomes"].enum_type is common_pb2.FaultOutcome.DESCRIPTOR
    dump = spte_pb2.StreamSptesResponse.DESCRIPTOR.fields_by_name
    assert [dump[f].type for f in ("gfns", "values")] == [u64, u64]
    assert dump["roots"].enum_type is common_pb2.TdpRoot.DESCRIPTOR


def test_list_methods_paginate() -> None:
    lists = [m for m in SERVICE.methods if m.name.startswith("List")]
    assert {m.name for m in lists} == {"ListHostProfiles", "ListVms", "ListMemslots"}
    for method in lists:
        request = method.input_type.fields_by_name
        response = method.output_type.fields_by_name
        assert request["page_size"].type == FieldDescriptor.TYPE_INT32, method.name
        assert request["page_token"].type == FieldDescriptor.TYPE_STRING, method.name
        assert response["next_page_token"].type == FieldDescriptor.TYPE_STRING, method.name
        repeated = [f for f in response.values() if f.is_repeated]
        assert len(repeated) == 1, method.name
        assert repeated[0].message_type is not None, method.name


@pytest.mark.parametrize(
    "resource",
    [host_pb2.Host, host_pb2.HostProfile, vm_pb2.Vm, vm_pb2.VmStats, memslot_pb2.Memslot],
)
def test_resources_have_a_name_field_first(resource: type) -> None:
    name = resource.DESCRIPTOR.fields_by_name["name"]
    assert name.number == 1
    assert name.type == FieldDescriptor.TYPE_STRING


def test_host_exposes_every_input_and_derived_global() -> None:
    config = host_pb2.HostConfig.DESCRIPTOR.fields_by_name
    assert set(HOST_INPUTS) <= set(config)
    globals_ = host_pb2.HostGlobals.DESCRIPTOR.fields_by_name
    assert set(HOST_DERIVED) <= set(globals_)
    host = host_pb2.Host.DESCRIPTOR.fields_by_name
    assert host["config"].message_type is host_pb2.HostConfig.DESCRIPTOR
    assert host["globals"].message_type is host_pb2.HostGlobals.DESCRIPTOR
    assert host["vm_types"].message_type is host_pb2.VmTypeSupport.DESCRIPTOR
    assert "unsupported_reason" in host_pb2.VmTypeSupport.DESCRIPTOR.fields_by_name


def test_vm_stats_use_kvm_names() -> None:
    fields = vm_pb2.VmStats.DESCRIPTOR.fields_by_name
    for name in VM_STATS:
        assert fields[name].type == FieldDescriptor.TYPE_UINT64, name


def test_masks_sptes_gpas_and_gfns_are_uint64() -> None:
    checked = 0
    for message in all_messages():
        for field in message.fields:
            if field.name.startswith(("is_", "has_")) or field.message_type is not None:
                continue  # predicates (is_frozen_spte, has_get_mt_mask) and messages
            if U64_NAME.search(field.name) or field.name in ("mmio_value", "shadow_me_value"):
                wide = (FieldDescriptor.TYPE_FIXED64,) if field.is_repeated else ()
                assert field.type in (FieldDescriptor.TYPE_UINT64, *wide), (
                    f"{message.full_name}.{field.name}"
                )
                checked += 1
    assert checked >= 40


def test_fault_error_code_is_flags_or_raw() -> None:
    request = fault_pb2.FaultRequest.DESCRIPTOR
    oneof = request.oneofs_by_name["error_code_kind"]
    assert {f.name for f in oneof.fields} == {"flags", "error_code"}
    flags = fault_pb2.ErrorCodeFlags.DESCRIPTOR.fields_by_name
    assert {"present", "write", "user", "rsvd", "fetch", "private"} <= set(flags)
    raw = fault_pb2.FaultRequest(error_code=0x2000000000002)
    raw.flags.write = True  # setting the other member clears the raw code
    assert raw.WhichOneof("error_code_kind") == "flags"
    assert raw.error_code == 0


def test_fault_response_marks_not_applicable_fields_with_presence() -> None:
    fields = fault_pb2.FaultResponse.DESCRIPTOR.fields_by_name
    for name in ("level", "spte", "mmio_check", "fast_path", "root", "req_level", "goal_level"):
        assert fields[name].has_presence, name
    response = fault_pb2.FaultResponse(outcome=common_pb2.FAULT_OUTCOME_EMULATE)
    assert not response.HasField("spte")
    response.spte = 0  # a zero SPTE (a TD's MMIO SPTE) is still a value
    assert response.HasField("spte")
    assert fields["events"].message_type is events_pb2.Event.DESCRIPTOR


def test_event_has_a_typed_case_per_kvmmmu_tracepoint() -> None:
    tracepoints = {
        "mark_mmio_spte",
        "handle_mmio_page_fault",
        "check_mmio_spte",
        "kvm_mmu_set_spte",
        "kvm_mmu_spte_requested",
        "kvm_tdp_mmu_spte_changed",
        "fast_page_fault",
        "kvm_mmu_split_huge_page",
        "kvm_mmu_get_page",
        "kvm_mmu_prepare_zap_page",
        "kvm_mmu_zap_all_fast",
    }
    event = events_pb2.Event.DESCRIPTOR
    cases = {f.name for f in event.oneofs_by_name["fields"].fields}
    assert tracepoints <= cases
    for name in ("sequence", "name", "text"):
        assert name in event.fields_by_name
    watch = events_pb2.WatchEventsRequest.DESCRIPTOR.fields_by_name
    assert watch["from_sequence"].has_presence


def test_oneof_targets_of_zap_decode_and_attributes() -> None:
    zap = spte_pb2.ZapSptesRequest.DESCRIPTOR.oneofs_by_name["target"]
    assert {f.name for f in zap.fields} == {"gfn_range", "all", "slot"}
    decode = spte_pb2.DecodeSpteRequest.DESCRIPTOR.oneofs_by_name["context"]
    assert {f.name for f in decode.fields} == {"vm", "host"}
    attrs = memslot_pb2.SetMemoryAttributesRequest.DESCRIPTOR.oneofs_by_name["range"]
    assert {f.name for f in attrs.fields} == {"gfn_range", "gpa_range"}


def test_update_vm_uses_a_field_mask() -> None:
    fields = vm_pb2.UpdateVmRequest.DESCRIPTOR.fields_by_name
    assert fields["update_mask"].message_type.full_name == "google.protobuf.FieldMask"
    assert fields["vm"].message_type is vm_pb2.Vm.DESCRIPTOR
