"""Client methods for faults, SPTE dumps and decoding, zaps, aging, events and health."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from grpc_health.v1 import health_pb2, health_pb2_grpc

from client._base import ClientBase, profile_name, vm_name
from client._convert import batch_fault, from_proto, spte_chunk
from client._transport import DEFAULT, Default, Stream, Timeout
from client.enums import HealthStatus, TdpRoot
from client.errors import NotFound
from client.events import EventBatch
from client.results import (
    AgeResult,
    BatchFaultResult,
    FaultResult,
    SpteChunk,
    SpteDecoding,
    ZapResult,
)
from kvmmu.v1 import common_pb2, events_pb2, fault_pb2, spte_pb2


def _gfn_range(start_gfn: int | None, end_gfn: int | None) -> common_pb2.GfnRange | None:
    if start_gfn is None and end_gfn is None:
        return None
    return common_pb2.GfnRange(start_gfn=start_gfn or 0, end_gfn=end_gfn or 0)


class MmuMethods(ClientBase):
    """Fault, BatchFault, StreamSptes, DecodeSpte, ZapSptes, AgeSptes, WatchEvents, health."""

    def fault(
        self,
        vm: str,
        gpa: int,
        error_code: int = 0,
        *,
        explain: bool = False,
        timeout: Timeout = DEFAULT,
    ) -> FaultResult:
        """kvm_mmu_page_fault(gpa, error_code); `client.enums.ErrorCode` names the bits."""
        request = fault_pb2.FaultRequest(
            name=vm_name(vm), gpa=gpa, error_code=error_code, explain=explain
        )
        msg = self._transport.unary(self._stub.Fault, request, idempotent=False, timeout=timeout)
        return from_proto(FaultResult, msg)

    def batch_fault(
        self,
        vm: str,
        gpas: Sequence[int],
        error_codes: Sequence[int] | None = None,
        *,
        error_code: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> BatchFaultResult:
        """Many faults in order, as if sent one by one: one error code per GPA, or `error_code`."""
        request = fault_pb2.BatchFaultRequest(
            name=vm_name(vm),
            gpas=gpas,
            error_codes=error_codes or (),
            shared_error_code=error_code,
        )
        msg = self._transport.unary(
            self._stub.BatchFault, request, idempotent=False, timeout=timeout
        )
        return batch_fault(msg)

    def stream_sptes(
        self,
        vm: str,
        *,
        start_gfn: int | None = None,
        end_gfn: int | None = None,
        level: int | None = None,
        only_present: bool = False,
        include_non_leaf: bool = False,
        root: TdpRoot = TdpRoot.UNSPECIFIED,
        chunk_size: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> Stream[SpteChunk]:
        """The VM's SPTEs as chunks of numpy arrays (GFN range [start_gfn, end_gfn))."""
        request = spte_pb2.StreamSptesRequest(
            name=vm_name(vm),
            gfn_range=_gfn_range(start_gfn, end_gfn),
            only_present=only_present,
            include_non_leaf=include_non_leaf,
            root=common_pb2.TdpRoot.ValueType(root),
            chunk_size=chunk_size,
        )
        if level is not None:
            request.level = level
        return self._transport.stream(self._stub.StreamSptes, request, spte_chunk, timeout=timeout)

    def decode_spte(
        self,
        value: int,
        *,
        vm: str | None = None,
        profile: str | None = None,
        mmio_value: int | None = None,
        memslots_generation: int | None = None,
        level: int | None = None,
        timeout: Timeout = DEFAULT,
    ) -> SpteDecoding:
        """Explain `value` as an SPTE of `vm`, or for a host profile (None: the server's host)."""
        request = spte_pb2.DecodeSpteRequest(value=value)
        if vm is not None:
            if profile is not None or mmio_value is not None or memslots_generation is not None:
                raise ValueError("give either vm or profile/mmio_value/memslots_generation")
            request.vm = vm_name(vm)
        else:
            host = request.host
            host.host_profile = profile_name(profile) if profile else ""
            if mmio_value is not None:
                host.mmio_value = mmio_value
            if memslots_generation is not None:
                host.memslots_generation = memslots_generation
        if level is not None:
            request.level = level
        msg = self._transport.unary(
            self._stub.DecodeSpte, request, idempotent=True, timeout=timeout
        )
        return from_proto(SpteDecoding, msg)

    def zap_sptes(
        self,
        vm: str,
        *,
        start_gfn: int | None = None,
        end_gfn: int | None = None,
        zap_all: bool = False,
        slot: int | None = None,
        timeout: Timeout = DEFAULT,
    ) -> ZapResult:
        """Zap a GFN range [start_gfn, end_gfn), every direct root (`zap_all`), or a slot."""
        targets = (start_gfn is not None or end_gfn is not None) + zap_all + (slot is not None)
        if targets != 1:
            raise ValueError("zap_sptes needs exactly one of a GFN range, zap_all or slot")
        request = spte_pb2.ZapSptesRequest(name=vm_name(vm))
        if zap_all:
            request.all = True
        elif slot is not None:
            request.slot = slot
        else:
            request.gfn_range.start_gfn = start_gfn or 0
            request.gfn_range.end_gfn = end_gfn or 0
        msg = self._transport.unary(self._stub.ZapSptes, request, idempotent=False, timeout=timeout)
        return from_proto(ZapResult, msg)

    def age_sptes(
        self,
        vm: str,
        start_gfn: int,
        end_gfn: int,
        *,
        test_only: bool = False,
        timeout: Timeout = DEFAULT,
    ) -> AgeResult:
        """clear_young (or, with `test_only`, test_young) on [start_gfn, end_gfn)."""
        request = spte_pb2.AgeSptesRequest(
            name=vm_name(vm),
            gfn_range=common_pb2.GfnRange(start_gfn=start_gfn, end_gfn=end_gfn),
            test_only=test_only,
        )
        msg = self._transport.unary(self._stub.AgeSptes, request, idempotent=False, timeout=timeout)
        return from_proto(AgeResult, msg)

    def watch_events(
        self,
        vm: str,
        *,
        from_sequence: int | None = None,
        follow: bool = False,
        names: Iterable[str] = (),
        timeout: Timeout = DEFAULT,
    ) -> Stream[EventBatch]:
        """The VM's events from `from_sequence` (None: only new ones); `follow` keeps it open.

        A followed stream has no deadline unless `timeout` is given.
        """
        request = events_pb2.WatchEventsRequest(name=vm_name(vm), follow=follow, names=names)
        if from_sequence is not None:
            request.from_sequence = from_sequence
        if follow and isinstance(timeout, Default):
            timeout = None
        return self._transport.stream(
            self._stub.WatchEvents,
            request,
            lambda msg: from_proto(EventBatch, msg),
            timeout=timeout,
        )

    def health(self, service: str = "", *, timeout: Timeout = DEFAULT) -> HealthStatus:
        """The standard grpc.health.v1 Check of `service` ("" is the whole server).

        A service the server does not know (NOT_FOUND) is SERVICE_UNKNOWN.
        """
        stub = health_pb2_grpc.HealthStub(self._transport.channel)
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            msg = self._transport.unary(stub.Check, request, idempotent=True, timeout=timeout)
        except NotFound:
            return HealthStatus.SERVICE_UNKNOWN
        return HealthStatus(msg.status)
