"""Client methods for the host, host profiles and VMs."""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import field_mask_pb2

from client._base import ClientBase, vm_name
from client._convert import from_proto
from client._transport import DEFAULT, Timeout
from client.enums import VmType, VmView
from client.types import Host, HostProfile, SetMmioValueResult, Vm, VmStats
from kvmmu.v1 import host_pb2, vm_pb2


def _view(stats: bool) -> vm_pb2.VmView.ValueType:
    return vm_pb2.VmView.ValueType(VmView.FULL if stats else VmView.BASIC)


class VmMethods(ClientBase):
    """GetHost, ListHostProfiles and the VM RPCs."""

    def get_host(self, *, timeout: Timeout = DEFAULT) -> Host:
        """The server's host configuration and every mask KVM derives from it."""
        msg = self._transport.unary(
            self._stub.GetHost,
            host_pb2.GetHostRequest(name="host"),
            idempotent=True,
            timeout=timeout,
        )
        return from_proto(Host, msg)

    def list_host_profiles(
        self, *, page_size: int = 0, timeout: Timeout = DEFAULT
    ) -> Iterator[HostProfile]:
        """Every ready-made host profile, fetching pages of `page_size` as needed."""

        def fetch(token: str) -> tuple[list[HostProfile], str]:
            request = host_pb2.ListHostProfilesRequest(page_size=page_size, page_token=token)
            msg = self._transport.unary(
                self._stub.ListHostProfiles, request, idempotent=True, timeout=timeout
            )
            return [from_proto(HostProfile, p) for p in msg.host_profiles], msg.next_page_token

        return self._pages(fetch)

    def create_vm(
        self,
        vm_type: VmType = VmType.DEFAULT,
        *,
        vm_id: str = "",
        display_name: str = "",
        guest_maxphyaddr: int = 0,
        tracing_enabled: bool = False,
        slot_zap_all_quirk: bool | None = None,
        mt_bits: int | None = None,
        initial_generation: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> Vm:
        """KVM_CREATE_VM: a new VM of `vm_type` (the server picks the id if `vm_id` is empty)."""
        vm = vm_pb2.Vm(
            display_name=display_name,
            vm_type=vm_pb2.VmType.ValueType(vm_type),
            guest_maxphyaddr=guest_maxphyaddr,
            tracing_enabled=tracing_enabled,
            initial_generation=initial_generation,
        )
        if slot_zap_all_quirk is not None:
            vm.slot_zap_all_quirk = slot_zap_all_quirk
        if mt_bits is not None:
            vm.mt_bits = mt_bits
        request = vm_pb2.CreateVmRequest(vm=vm, vm_id=vm_id)
        msg = self._transport.unary(self._stub.CreateVm, request, idempotent=False, timeout=timeout)
        return from_proto(Vm, msg)

    def get_vm(self, vm: str, *, stats: bool = False, timeout: Timeout = DEFAULT) -> Vm:
        """One VM ("td1" or "vms/td1"); with `stats`, its statistics too."""
        request = vm_pb2.GetVmRequest(name=vm_name(vm), view=_view(stats))
        msg = self._transport.unary(self._stub.GetVm, request, idempotent=True, timeout=timeout)
        return from_proto(Vm, msg)

    def list_vms(
        self, *, stats: bool = False, page_size: int = 0, timeout: Timeout = DEFAULT
    ) -> Iterator[Vm]:
        """Every VM in id order, fetching pages of `page_size` (0: server default) as needed."""

        def fetch(token: str) -> tuple[list[Vm], str]:
            request = vm_pb2.ListVmsRequest(
                page_size=page_size, page_token=token, view=_view(stats)
            )
            msg = self._transport.unary(
                self._stub.ListVms, request, idempotent=True, timeout=timeout
            )
            return [from_proto(Vm, v) for v in msg.vms], msg.next_page_token

        return self._pages(fetch)

    def update_vm(
        self,
        vm: str,
        *,
        display_name: str | None = None,
        tracing_enabled: bool | None = None,
        timeout: Timeout = DEFAULT,
    ) -> Vm:
        """Change the display name and/or the tracing flag (only the arguments given)."""
        msg = vm_pb2.Vm(name=vm_name(vm))
        paths = []
        if display_name is not None:
            msg.display_name = display_name
            paths.append("display_name")
        if tracing_enabled is not None:
            msg.tracing_enabled = tracing_enabled
            paths.append("tracing_enabled")
        if not paths:
            raise ValueError("update_vm needs display_name or tracing_enabled")
        request = vm_pb2.UpdateVmRequest(vm=msg, update_mask=field_mask_pb2.FieldMask(paths=paths))
        reply = self._transport.unary(
            self._stub.UpdateVm, request, idempotent=False, timeout=timeout
        )
        return from_proto(Vm, reply)

    def delete_vm(self, vm: str, *, timeout: Timeout = DEFAULT) -> None:
        """Delete a VM and all its state."""
        request = vm_pb2.DeleteVmRequest(name=vm_name(vm))
        self._transport.unary(self._stub.DeleteVm, request, idempotent=False, timeout=timeout)

    def set_mmio_value(
        self, vm: str, value: int, *, zap_existing: bool = False, timeout: Timeout = DEFAULT
    ) -> SetMmioValueResult:
        """kvm_mmu_set_mmio_spte_value(); with `zap_existing`, zap every SPTE first."""
        request = vm_pb2.SetMmioValueRequest(
            name=vm_name(vm), value=value, zap_existing=zap_existing
        )
        msg = self._transport.unary(
            self._stub.SetMmioValue, request, idempotent=False, timeout=timeout
        )
        return from_proto(SetMmioValueResult, msg)

    def get_vm_stats(self, vm: str, *, timeout: Timeout = DEFAULT) -> VmStats:
        """The VM's statistics under KVM's debugfs names."""
        request = vm_pb2.GetVmStatsRequest(name=f"{vm_name(vm)}/stats")
        msg = self._transport.unary(
            self._stub.GetVmStats, request, idempotent=True, timeout=timeout
        )
        return from_proto(VmStats, msg)
