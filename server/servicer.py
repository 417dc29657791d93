"""kvmmu.v1.MmuService: a thin adapter. Each RPC validates and converts its
request (server.convert), applies an operation record (server.apply) or reads
(server.queries), and converts the result back. Errors are raised, never
handled here: server.interceptor maps them to status codes in one place."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from google.protobuf import empty_pb2

from codec.decode import decode_to_proto
from kvmmu.v1 import (
    events_pb2,
    fault_pb2,
    host_pb2,
    memslot_pb2,
    service_pb2_grpc,
    spte_pb2,
    vm_pb2,
)
from mmu.decode import decode_spte
from mmu.errors import LimitExceeded
from mmu.profiles import PROFILES
from server import ops, queries
from server.apply import apply
from server.config import ServerConfig
from server.convert import fault as fault_conv
from server.convert import host as host_conv
from server.convert import memslot as memslot_conv
from server.convert import spte as spte_conv
from server.convert import tables as tables_conv
from server.convert import vm as vm_conv
from server.convert.events import event_to_proto
from server.errors import FieldError
from server.limits import check_dirty_log_size
from server.names import HOST_NAME, parse_memslot_name, parse_profile_name, parse_stats_name
from server.names import parse_vm_name as vm_id_of
from server.pagination import decode_token, page_size, paginate
from server.registry import Registry

Context = grpc.ServicerContext


class MmuServicer(service_pb2_grpc.MmuServiceServicer):
    def __init__(self, registry: Registry, config: ServerConfig) -> None:
        self.registry = registry
        self.limits = config.limits
        self.host = registry.host
        self._host = host_conv.host_to_proto(self.host, config.profile, config.overridden_fields())
        self._profiles = {name: host_conv.profile_to_proto(p) for name, p in PROFILES.items()}
        self._streams = threading.BoundedSemaphore(self.limits.max_concurrent_streams)

    @contextmanager
    def _stream_slot(self) -> Iterator[None]:
        if not self._streams.acquire(blocking=False):
            raise LimitExceeded(
                f"the server already serves {self.limits.max_concurrent_streams} streams",
                limit="max_concurrent_streams",
            )
        try:
            yield
        finally:
            self._streams.release()

    # --- host -----------------------------------------------------------------

    def GetHost(self, request: host_pb2.GetHostRequest, context: Context) -> host_pb2.Host:
        if request.name not in ("", HOST_NAME):
            raise FieldError("the host resource is named 'host'", field="name")
        return self._host

    def ListHostProfiles(
        self, request: host_pb2.ListHostProfilesRequest, context: Context
    ) -> host_pb2.ListHostProfilesResponse:
        size = page_size(request.page_size, self.limits)
        after = decode_token(request.page_token, "hostProfiles")
        names, token = paginate(sorted(self._profiles), after, size, "hostProfiles")
        return host_pb2.ListHostProfilesResponse(
            host_profiles=[self._profiles[n] for n in names], next_page_token=token
        )

    # --- VMs ------------------------------------------------------------------

    def CreateVm(self, request: vm_pb2.CreateVmRequest, context: Context) -> vm_pb2.Vm:
        op = vm_conv.create_vm_op(request, time.time_ns())
        return vm_conv.vm_to_proto(apply(self.registry, op))

    def GetVm(self, request: vm_pb2.GetVmRequest, context: Context) -> vm_pb2.Vm:
        view = vm_conv.check_view(request.view)
        return vm_conv.vm_to_proto(queries.get_vm(self.registry, vm_id_of(request.name)), view)

    def ListVms(self, request: vm_pb2.ListVmsRequest, context: Context) -> vm_pb2.ListVmsResponse:
        view = vm_conv.check_view(request.view)
        size = page_size(request.page_size, self.limits)
        after = decode_token(request.page_token, "vms")
        ids, token = paginate(self.registry.ids(), after, size, "vms")
        infos = (self.registry.snapshot(vm_id) for vm_id in ids)
        return vm_pb2.ListVmsResponse(
            vms=[vm_conv.vm_to_proto(info, view) for info in infos if info is not None],
            next_page_token=token,
        )

    def UpdateVm(self, request: vm_pb2.UpdateVmRequest, context: Context) -> vm_pb2.Vm:
        return vm_conv.vm_to_proto(apply(self.registry, vm_conv.update_vm_op(request)))

    def DeleteVm(self, request: vm_pb2.DeleteVmRequest, context: Context) -> empty_pb2.Empty:
        apply(self.registry, ops.DeleteVm(vm_id_of(request.name)))
        return empty_pb2.Empty()

    def SetMmioValue(
        self, request: vm_pb2.SetMmioValueRequest, context: Context
    ) -> vm_pb2.SetMmioValueResponse:
        result = apply(self.registry, vm_conv.set_mmio_value_op(request))
        return vm_pb2.SetMmioValueResponse(
            vm=vm_conv.vm_to_proto(result.vm), spte_changes=result.spte_changes
        )

    def GetVmStats(self, request: vm_pb2.GetVmStatsRequest, context: Context) -> vm_pb2.VmStats:
        info = queries.get_vm(self.registry, parse_stats_name(request.name))
        return vm_conv.stats_to_proto(info)

    # --- memslots -------------------------------------------------------------

    def SetMemslot(
        self, request: memslot_pb2.SetMemslotRequest, context: Context
    ) -> memslot_pb2.SetMemslotResponse:
        op = memslot_conv.set_memslot_op(request)
        check_dirty_log_size(op.slot, self.limits)
        change = apply(self.registry, op)
        slot = change.result.slot or op.slot
        return memslot_pb2.SetMemslotResponse(
            memslot=memslot_conv.memslot_to_proto(op.vm_id, slot),
            outcome=memslot_conv.outcome_to_proto(change),
        )

    def GetMemslot(
        self, request: memslot_pb2.GetMemslotRequest, context: Context
    ) -> memslot_pb2.Memslot:
        vm_id, slot_id = parse_memslot_name(request.name)
        slot = queries.memslot(self.registry, vm_id, slot_id)
        return memslot_conv.memslot_to_proto(vm_id, slot)

    def DeleteMemslot(
        self, request: memslot_pb2.DeleteMemslotRequest, context: Context
    ) -> memslot_pb2.DeleteMemslotResponse:
        change = apply(self.registry, memslot_conv.delete_memslot_op(request))
        return memslot_pb2.DeleteMemslotResponse(outcome=memslot_conv.outcome_to_proto(change))

    def ListMemslots(
        self, request: memslot_pb2.ListMemslotsRequest, context: Context
    ) -> memslot_pb2.ListMemslotsResponse:
        vm_id = vm_id_of(request.parent, "parent")
        size = page_size(request.page_size, self.limits)
        collection = f"{request.parent}/memslots"
        after = decode_token(request.page_token, collection)
        slots = {f"{s.id:05d}": s for s in queries.memslots(self.registry, vm_id)}
        keys, token = paginate(sorted(slots), after, size, collection)
        return memslot_pb2.ListMemslotsResponse(
            memslots=[memslot_conv.memslot_to_proto(vm_id, slots[k]) for k in keys],
            next_page_token=token,
        )

    def SetMemoryAttributes(
        self, request: memslot_pb2.SetMemoryAttributesRequest, context: Context
    ) -> memslot_pb2.SetMemoryAttributesResponse:
        result = apply(self.registry, memslot_conv.set_memory_attributes_op(request))
        return memslot_conv.attributes_to_proto(result)

    # --- faults ---------------------------------------------------------------

    def Fault(self, request: fault_pb2.FaultRequest, context: Context) -> fault_pb2.FaultResponse:
        reply = apply(self.registry, fault_conv.fault_op(request))
        return fault_conv.fault_response(self.host, reply)

    def BatchFault(
        self, request: fault_pb2.BatchFaultRequest, context: Context
    ) -> fault_pb2.BatchFaultResponse:
        result = apply(self.registry, fault_conv.batch_fault_op(request, self.limits))
        return fault_conv.batch_response(result)

    # --- SPTEs ----------------------------------------------------------------

    def StreamSptes(
        self, request: spte_pb2.StreamSptesRequest, context: Context
    ) -> Iterator[spte_pb2.StreamSptesResponse]:
        query = spte_conv.dump_query(request, self.limits)
        with self._stream_slot():
            arrays = queries.dump(self.registry, query)
            for lo in range(0, len(arrays), query.chunk_size):
                if not context.is_active():
                    return
                yield spte_conv.chunk_to_proto(arrays.slice(lo, lo + query.chunk_size))

    def DecodeSpte(
        self, request: spte_pb2.DecodeSpteRequest, context: Context
    ) -> spte_pb2.DecodeSpteResponse:
        level = spte_conv.check_level(request.HasField("level"), request.level)
        which = request.WhichOneof("context")
        if which == "vm":
            ctx = queries.vm_decode_context(self.registry, vm_id_of(request.vm, "vm"))
        elif which == "host":
            host = request.host
            profile = (
                parse_profile_name(host.host_profile, "host.host_profile")
                if host.host_profile
                else None
            )
            ctx = queries.host_decode_context(
                self.host,
                profile,
                host.mmio_value if host.HasField("mmio_value") else None,
                host.memslots_generation if host.HasField("memslots_generation") else None,
            )
        else:
            raise FieldError("one of vm or host is required", field="vm")
        decoded = decode_spte(ctx.view, request.value, level)
        return decode_to_proto(ctx.view.host, decoded, ctx.generation)

    def ZapSptes(
        self, request: spte_pb2.ZapSptesRequest, context: Context
    ) -> spte_pb2.ZapSptesResponse:
        return tables_conv.zap_response(apply(self.registry, tables_conv.zap_op(request)))

    def GetDirtyLog(
        self, request: spte_pb2.GetDirtyLogRequest, context: Context
    ) -> spte_pb2.GetDirtyLogResponse:
        result = apply(self.registry, tables_conv.dirty_log_op(request))
        return tables_conv.dirty_log_response(result)

    def AgeSptes(
        self, request: spte_pb2.AgeSptesRequest, context: Context
    ) -> spte_pb2.AgeSptesResponse:
        return tables_conv.age_response(apply(self.registry, tables_conv.age_op(request)))

    # --- events ---------------------------------------------------------------

    def WatchEvents(
        self, request: events_pb2.WatchEventsRequest, context: Context
    ) -> Iterator[events_pb2.WatchEventsResponse]:
        vm_id = vm_id_of(request.name)
        start = queries.check_from_sequence(
            request.HasField("from_sequence"), request.from_sequence
        )
        with self._stream_slot():
            watch = queries.start_watch(self.registry, vm_id, start)
            context.add_callback(lambda: self.registry.wake(vm_id))
            # Tells the client it is subscribed, and at which sequence number.
            context.send_initial_metadata((("kvmmu-first-sequence", str(watch.first_sequence)),))
            batches = queries.watch_events(
                self.registry, watch, request.follow, frozenset(request.names), context.is_active
            )
            for batch in batches:
                yield events_pb2.WatchEventsResponse(
                    events=[event_to_proto(batch.host, s, e) for s, e in batch.events],
                    lost_events=batch.lost,
                )
