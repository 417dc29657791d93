"""What every group of client methods shares: the transport, the stub, names, pages."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from client._transport import Transport
from kvmmu.v1 import service_pb2_grpc

M = TypeVar("M")


def vm_name(vm: str) -> str:
    """The resource name of a VM: "td1" and "vms/td1" both give "vms/td1"."""
    return vm if vm.startswith("vms/") else f"vms/{vm}"


def memslot_name(vm: str, slot: int) -> str:
    """The resource name of a memslot, "vms/{vm}/memslots/{slot}"."""
    return f"{vm_name(vm)}/memslots/{slot}"


def profile_name(profile: str) -> str:
    """The resource name of a host profile: "intel-tdx" gives "hostProfiles/intel-tdx"."""
    return profile if profile.startswith("hostProfiles/") else f"hostProfiles/{profile}"


class ClientBase:
    """Holds the transport and the MmuService stub; subclasses add the RPC methods."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = service_pb2_grpc.MmuServiceStub(transport.channel)

    @staticmethod
    def _pages(fetch: Callable[[str], tuple[Iterable[M], str]]) -> Iterator[M]:
        """Every item of a paginated list: `fetch(page_token)` returns (items, next token)."""
        token = ""
        while True:
            items, token = fetch(token)
            yield from items
            if not token:
                return
