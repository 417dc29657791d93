"""Client methods for memslots, memory attributes and dirty logging."""

from __future__ import annotations

from collections.abc import Iterator

from client._base import ClientBase, memslot_name, vm_name
from client._convert import from_proto
from client._transport import DEFAULT, Timeout
from client.enums import BackingPageSize
from client.results import DirtyLog
from client.types import DeleteMemslotResult, Memslot, SetMemoryAttributesResult, SetMemslotResult
from kvmmu.v1 import common_pb2, memslot_pb2, spte_pb2


class MemoryMethods(ClientBase):
    """The memslot RPCs, SetMemoryAttributes and GetDirtyLog."""

    def set_memslot(
        self,
        vm: str,
        slot: int,
        *,
        guest_phys_addr: int,
        memory_size: int,
        userspace_addr: int = 0,
        log_dirty_pages: bool = False,
        readonly: bool = False,
        guest_memfd: bool = False,
        host_pfn_base: int = 0,
        backing_page_size: BackingPageSize = BackingPageSize.SIZE_4K,
        gmem_pfn_base: int | None = None,
        timeout: Timeout = DEFAULT,
    ) -> SetMemslotResult:
        """KVM_SET_USER_MEMORY_REGION2: create a slot, move it, or change its dirty logging."""
        memslot = memslot_pb2.Memslot(
            slot=slot,
            guest_phys_addr=guest_phys_addr,
            memory_size=memory_size,
            userspace_addr=userspace_addr,
            log_dirty_pages=log_dirty_pages,
            readonly=readonly,
            guest_memfd=guest_memfd,
            host_pfn_base=host_pfn_base,
            backing_page_size=memslot_pb2.BackingPageSize.ValueType(backing_page_size),
        )
        if gmem_pfn_base is not None:
            memslot.gmem_pfn_base = gmem_pfn_base
        request = memslot_pb2.SetMemslotRequest(parent=vm_name(vm), memslot=memslot)
        msg = self._transport.unary(
            self._stub.SetMemslot, request, idempotent=False, timeout=timeout
        )
        return from_proto(SetMemslotResult, msg)

    def get_memslot(self, vm: str, slot: int, *, timeout: Timeout = DEFAULT) -> Memslot:
        """One memslot of a VM."""
        request = memslot_pb2.GetMemslotRequest(name=memslot_name(vm, slot))
        msg = self._transport.unary(
            self._stub.GetMemslot, request, idempotent=True, timeout=timeout
        )
        return from_proto(Memslot, msg)

    def delete_memslot(
        self, vm: str, slot: int, *, timeout: Timeout = DEFAULT
    ) -> DeleteMemslotResult:
        """KVM_MR_DELETE: remove a slot, zapping as KVM does."""
        request = memslot_pb2.DeleteMemslotRequest(name=memslot_name(vm, slot))
        msg = self._transport.unary(
            self._stub.DeleteMemslot, request, idempotent=False, timeout=timeout
        )
        return from_proto(DeleteMemslotResult, msg)

    def list_memslots(
        self, vm: str, *, page_size: int = 0, timeout: Timeout = DEFAULT
    ) -> Iterator[Memslot]:
        """Every memslot of a VM in slot order, fetching pages as needed."""
        parent = vm_name(vm)

        def fetch(token: str) -> tuple[list[Memslot], str]:
            request = memslot_pb2.ListMemslotsRequest(
                parent=parent, page_size=page_size, page_token=token
            )
            msg = self._transport.unary(
                self._stub.ListMemslots, request, idempotent=True, timeout=timeout
            )
            return [from_proto(Memslot, m) for m in msg.memslots], msg.next_page_token

        return self._pages(fetch)

    def set_memory_attributes(
        self, vm: str, address: int, size: int, *, private: bool, timeout: Timeout = DEFAULT
    ) -> SetMemoryAttributesResult:
        """KVM_SET_MEMORY_ATTRIBUTES on [address, address + size): set or clear PRIVATE."""
        request = memslot_pb2.SetMemoryAttributesRequest(
            name=vm_name(vm),
            gpa_range=common_pb2.GpaRange(address=address, size=size),
            private=private,
        )
        msg = self._transport.unary(
            self._stub.SetMemoryAttributes, request, idempotent=False, timeout=timeout
        )
        return from_proto(SetMemoryAttributesResult, msg)

    def get_dirty_log(self, vm: str, slot: int, *, timeout: Timeout = DEFAULT) -> DirtyLog:
        """KVM_GET_DIRTY_LOG: harvest and clear a slot's dirty bitmap (not idempotent)."""
        request = spte_pb2.GetDirtyLogRequest(name=memslot_name(vm, slot))
        msg = self._transport.unary(
            self._stub.GetDirtyLog, request, idempotent=False, timeout=timeout
        )
        return from_proto(DirtyLog, msg)
