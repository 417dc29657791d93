"""Vm, VmStats and the VM requests: CreateVm, UpdateVm, SetMmioValue."""

from __future__ import annotations

import secrets
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from kvmmu.v1 import vm_pb2
from server import ops
from server.errors import FieldError
from server.names import check_vm_id, parse_vm_name, vm_name

MAX_DISPLAY_NAME: Final = 256
UPDATABLE: Final = ("display_name", "tracing_enabled")
STAT_NAMES: Final = tuple(f.name for f in vm_pb2.VmStats.DESCRIPTOR.fields if f.name != "name")


def new_vm_id() -> str:
    """A server-assigned id: "vm-" and 12 random hex digits."""
    return f"vm-{secrets.token_hex(6)}"


def _display_name(text: str, field: str) -> str:
    if len(text) > MAX_DISPLAY_NAME:
        raise FieldError(f"at most {MAX_DISPLAY_NAME} characters", field=field)
    return text


def create_vm_op(request: vm_pb2.CreateVmRequest, now_ns: int) -> ops.CreateVm:
    vm = request.vm
    vm_id = check_vm_id(request.vm_id, "vm_id") if request.vm_id else new_vm_id()
    if vm.vm_type not in vm_pb2.VmType.values():
        raise FieldError(f"unknown VM type {vm.vm_type}", field="vm.vm_type")
    kvm_type = max(int(vm.vm_type) - 1, 0)  # UNSPECIFIED means KVM_X86_DEFAULT_VM
    return ops.CreateVm(
        vm_id=vm_id,
        vm_type=kvm_type,
        display_name=_display_name(vm.display_name, "vm.display_name"),
        guest_maxphyaddr=vm.guest_maxphyaddr or None,
        mt_bits=vm.mt_bits if vm.HasField("mt_bits") else None,
        slot_zap_all_quirk=vm.slot_zap_all_quirk if vm.HasField("slot_zap_all_quirk") else True,
        initial_generation=vm.initial_generation,
        tracing=vm.tracing_enabled,
        create_time_ns=now_ns,
    )


def update_vm_op(request: vm_pb2.UpdateVmRequest) -> ops.UpdateVm:
    vm_id = parse_vm_name(request.vm.name, "vm.name")
    paths = list(request.update_mask.paths)
    if not paths or paths == ["*"]:
        paths = list(UPDATABLE)
    for path in paths:
        if path not in UPDATABLE:
            raise FieldError(
                f"{path!r} cannot be updated; mutable fields: {', '.join(UPDATABLE)}",
                field="update_mask",
            )
    vm = request.vm
    return ops.UpdateVm(
        vm_id=vm_id,
        display_name=(
            _display_name(vm.display_name, "vm.display_name") if "display_name" in paths else None
        ),
        tracing=vm.tracing_enabled if "tracing_enabled" in paths else None,
    )


def set_mmio_value_op(request: vm_pb2.SetMmioValueRequest) -> ops.SetMmioValue:
    return ops.SetMmioValue(
        vm_id=parse_vm_name(request.name),
        value=request.value,
        zap_existing=request.zap_existing,
    )


def stats_to_proto(info: ops.VmInfo) -> vm_pb2.VmStats:
    msg = vm_pb2.VmStats(name=f"{vm_name(info.vm_id)}/stats")
    for name in STAT_NAMES:
        setattr(msg, name, info.stats.get(name, 0))
    return msg


def vm_to_proto(info: ops.VmInfo, view: int = vm_pb2.VM_VIEW_BASIC) -> vm_pb2.Vm:
    create_time = Timestamp()
    create_time.FromNanoseconds(info.create_time_ns)
    msg = vm_pb2.Vm(
        name=vm_name(info.vm_id),
        vm_id=info.vm_id,
        display_name=info.display_name,
        vm_type=vm_pb2.VmType.ValueType(info.vm_type + 1),
        mmio_value=info.mmio_value,
        guest_maxphyaddr=info.guest_maxphyaddr,
        tdp_root_level=info.tdp_root_level,
        nr_memslot_as_ids=info.nr_memslot_as_ids,
        memslots_generation=info.memslots_generation,
        create_time=create_time,
        tracing_enabled=info.tracing,
        gfn_direct_bits=info.gfn_direct_bits,
        slot_zap_all_quirk=info.slot_zap_all_quirk,
        mt_bits=info.mt_bits,
        initial_generation=info.initial_generation,
    )
    if info.tdp_has_smep is not None:
        msg.tdp_has_smep = info.tdp_has_smep
    if info.tdp_root_access is not None:
        msg.tdp_root_access = info.tdp_root_access
    if view == vm_pb2.VM_VIEW_FULL:
        msg.stats.CopyFrom(stats_to_proto(info))
    return msg


def check_view(view: int) -> int:
    if view not in vm_pb2.VmView.values():
        raise FieldError(f"unknown view {view}", field="view")
    return view
