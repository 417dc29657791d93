"""Host, VMs and the MMIO value over real loopback channels."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

from kvmmu.v1 import fault_pb2, host_pb2, vm_pb2
from tests.server.conftest import add_slot, create_vm, fails, unique_id

pytestmark = pytest.mark.timeout(60)
Code = grpc.StatusCode


def test_get_host_has_config_globals_and_vm_types(stub):
    host = stub.GetHost(host_pb2.GetHostRequest(name="host"))
    assert host.name == "host"
    assert host.profile == "hostProfiles/intel-ept"
    assert host.config.mmu == host_pb2.MMU_KIND_EPT
    assert host.globals.shadow_mmio_value == 0x6
    assert host.globals.shadow_mmio_mask == 0x8000000000000007
    assert host.globals.kvm_mmu_max_gfn == (1 << 34) - 1
    assert [t.vm_type for t in host.vm_types] == list(range(1, 7))
    tdx = host.vm_types[5]
    assert not tdx.supported and "TDX" in tdx.unsupported_reason
    assert stub.GetHost(host_pb2.GetHostRequest()).name == "host"
    assert fails(stub.GetHost, host_pb2.GetHostRequest(name="hosts/x")).field == "name"


def test_list_host_profiles_paginates(stub):
    names, token = [], ""
    while True:
        page = stub.ListHostProfiles(
            host_pb2.ListHostProfilesRequest(page_size=4, page_token=token)
        )
        assert len(page.host_profiles) <= 4
        names += [p.name for p in page.host_profiles]
        token = page.next_page_token
        if not token:
            break
    assert names == sorted(names)
    assert "hostProfiles/intel-tdx" in names and len(names) == 6
    tdx = next(
        p
        for p in stub.ListHostProfiles(host_pb2.ListHostProfilesRequest()).host_profiles
        if p.name == "hostProfiles/intel-tdx"
    )
    assert tdx.vm_types[5].supported and tdx.globals.tdx_allowed


def test_create_get_vm(stub):
    vm_id = unique_id()
    vm = stub.CreateVm(
        vm_pb2.CreateVmRequest(vm_id=vm_id, vm=vm_pb2.Vm(display_name="guest", mt_bits=0x30))
    )
    assert vm.name == f"vms/{vm_id}" and vm.vm_id == vm_id
    assert vm.vm_type == vm_pb2.VM_TYPE_DEFAULT
    assert vm.mmio_value == 0x6 and vm.mt_bits == 0x30
    assert vm.tdp_root_level == 4 and vm.nr_memslot_as_ids == 2
    assert vm.create_time.seconds > 0
    assert not vm.HasField("stats")
    full = stub.GetVm(vm_pb2.GetVmRequest(name=vm.name, view=vm_pb2.VM_VIEW_FULL))
    assert full.stats.name == f"{vm.name}/stats" and full.stats.direct_tables == 0
    assert full.display_name == "guest"


def test_create_vm_server_assigns_id(stub):
    vm = stub.CreateVm(vm_pb2.CreateVmRequest(vm=vm_pb2.Vm(vm_type=vm_pb2.VM_TYPE_SW_PROTECTED)))
    assert vm.vm_id.startswith("vm-") and vm.name == f"vms/{vm.vm_id}"
    assert vm.nr_memslot_as_ids == 1


def test_create_vm_errors(stub):
    vm_id = unique_id()
    stub.CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id))
    dup = fails(stub.CreateVm, vm_pb2.CreateVmRequest(vm_id=vm_id))
    assert dup.code == Code.ALREADY_EXISTS
    assert dup.detail(error_details_pb2.ResourceInfo).resource_name == f"vms/{vm_id}"
    for bad in ("Upper", "9lives", "a" * 64, "a/b", "-x"):
        failure = fails(stub.CreateVm, vm_pb2.CreateVmRequest(vm_id=bad))
        assert (failure.code, failure.field) == (Code.INVALID_ARGUMENT, "vm_id")
    unknown = fails(stub.CreateVm, vm_pb2.CreateVmRequest(vm=vm_pb2.Vm(vm_type=99)))
    assert (unknown.code, unknown.field) == (Code.INVALID_ARGUMENT, "vm.vm_type")
    tdx = fails(stub.CreateVm, vm_pb2.CreateVmRequest(vm=vm_pb2.Vm(vm_type=vm_pb2.VM_TYPE_TDX)))
    assert tdx.code == Code.FAILED_PRECONDITION and "TDX" in tdx.message
    violation = tdx.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert violation.subject == "vm.vm_type"
    gma = fails(stub.CreateVm, vm_pb2.CreateVmRequest(vm=vm_pb2.Vm(guest_maxphyaddr=60)))
    assert (gma.code, gma.field) == (Code.INVALID_ARGUMENT, "vm.guest_maxphyaddr")
    mt = fails(stub.CreateVm, vm_pb2.CreateVmRequest(vm=vm_pb2.Vm(mt_bits=0x1)))
    assert (mt.code, mt.field) == (Code.INVALID_ARGUMENT, "vm.mt_bits")
    gen = fails(stub.CreateVm, vm_pb2.CreateVmRequest(vm=vm_pb2.Vm(initial_generation=1 << 63)))
    assert (gen.code, gen.field) == (Code.INVALID_ARGUMENT, "vm.initial_generation")


def test_get_and_delete_unknown_vm_is_not_found(stub):
    for call, request in (
        (stub.GetVm, vm_pb2.GetVmRequest(name="vms/nope")),
        (stub.DeleteVm, vm_pb2.DeleteVmRequest(name="vms/nope")),
        (stub.GetVmStats, vm_pb2.GetVmStatsRequest(name="vms/nope/stats")),
        (stub.Fault, fault_pb2.FaultRequest(name="vms/nope")),
    ):
        failure = fails(call, request)
        assert failure.code == Code.NOT_FOUND
        info = failure.detail(error_details_pb2.ResourceInfo)
        assert (info.resource_type, info.resource_name) == ("kvmmu.v1.Vm", "vms/nope")
    assert fails(stub.GetVm, vm_pb2.GetVmRequest(name="vm/x")).field == "name"
    stats = fails(stub.GetVmStats, vm_pb2.GetVmStatsRequest(name="vms/x"))
    assert stats.field == "name"


def test_delete_vm(stub):
    name = create_vm(stub)
    stub.DeleteVm(vm_pb2.DeleteVmRequest(name=name))
    assert fails(stub.GetVm, vm_pb2.GetVmRequest(name=name)).code == Code.NOT_FOUND


def test_list_vms_paginates_in_id_order(stub):
    mine = sorted(create_vm(stub) for _ in range(5))
    seen, token, pages = [], "", 0
    while True:
        page = stub.ListVms(
            vm_pb2.ListVmsRequest(page_size=2, page_token=token, view=vm_pb2.VM_VIEW_FULL)
        )
        pages += 1
        assert len(page.vms) <= 2
        assert all(v.HasField("stats") for v in page.vms)
        seen += [v.name for v in page.vms]
        token = page.next_page_token
        if not token:
            break
    assert pages >= 3
    assert seen == sorted(seen) and set(mine) <= set(seen)
    bad = fails(stub.ListVms, vm_pb2.ListVmsRequest(page_token="garbage"))
    assert (bad.code, bad.field) == (Code.INVALID_ARGUMENT, "page_token")
    profile_token = stub.ListHostProfiles(
        host_pb2.ListHostProfilesRequest(page_size=1)
    ).next_page_token
    other = fails(stub.ListVms, vm_pb2.ListVmsRequest(page_token=profile_token))
    assert other.field == "page_token"
    assert fails(stub.ListVms, vm_pb2.ListVmsRequest(page_size=-1)).field == "page_size"
    assert fails(stub.ListVms, vm_pb2.ListVmsRequest(view=7)).field == "view"


def test_update_vm(stub):
    name = create_vm(stub, display_name="old")
    vm = stub.UpdateVm(
        vm_pb2.UpdateVmRequest(
            vm=vm_pb2.Vm(name=name, display_name="new", tracing_enabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    assert vm.display_name == "new" and not vm.tracing_enabled
    vm = stub.UpdateVm(vm_pb2.UpdateVmRequest(vm=vm_pb2.Vm(name=name, tracing_enabled=True)))
    assert vm.tracing_enabled and vm.display_name == ""
    bad = fails(
        stub.UpdateVm,
        vm_pb2.UpdateVmRequest(
            vm=vm_pb2.Vm(name=name), update_mask=field_mask_pb2.FieldMask(paths=["mmio_value"])
        ),
    )
    assert (bad.code, bad.field) == (Code.INVALID_ARGUMENT, "update_mask")
    assert fails(stub.UpdateVm, vm_pb2.UpdateVmRequest()).field == "vm.name"


def test_set_mmio_value(stub):
    name = create_vm(stub)
    add_slot(stub, name)
    vm = stub.SetMmioValue(vm_pb2.SetMmioValueRequest(name=name, value=0)).vm
    assert vm.mmio_value == 0
    stub.Fault(fault_pb2.FaultRequest(name=name, gpa=0x1000))
    refused = fails(stub.SetMmioValue, vm_pb2.SetMmioValueRequest(name=name, value=0x6))
    assert refused.code == Code.FAILED_PRECONDITION and "zap" in refused.message
    zapped = stub.SetMmioValue(vm_pb2.SetMmioValueRequest(name=name, value=0x6, zap_existing=True))
    assert zapped.vm.mmio_value == 0x6 and zapped.spte_changes > 0
    host_rejects = fails(stub.SetMmioValue, vm_pb2.SetMmioValueRequest(name=name, value=0x10))
    assert host_rejects.code == Code.FAILED_PRECONDITION
    assert host_rejects.field == "value"
    assert host_rejects.info.reason == "HOST_REJECTS_VALUE"
    after = stub.GetVm(vm_pb2.GetVmRequest(name=name))
    assert after.mmio_value == 0x6


def test_get_vm_stats(stub):
    name = create_vm(stub)
    add_slot(stub, name)
    for gpa in (0x1000, 0x2000, 0x1000):
        stub.Fault(fault_pb2.FaultRequest(name=name, gpa=gpa, error_code=0x2))
    stats = stub.GetVmStats(vm_pb2.GetVmStatsRequest(name=f"{name}/stats"))
    assert stats.pf_taken == 3 and stats.pf_fixed == 2 and stats.pages_4k == 2
    assert stats.direct_tables == 4
