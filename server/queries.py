"""Read-only access to the registry: snapshots, pages, dumps and event tails.

Each read takes the VM's lock only long enough to copy what it needs, so
conversion and streaming happen outside it. No gRPC here; streams are told
whether their caller is still there through an `active` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mmu.dump import SpteArrays
from mmu.events import Event
from mmu.host import Host, derive_host
from mmu.memslots import Memslot
from mmu.profiles import PROFILES
from mmu.vmtypes import VmView
from server.convert.spte import DumpQuery
from server.errors import FieldError, ResourceNotFound
from server.names import MEMSLOT_TYPE, VM_TYPE, memslot_name, vm_name
from server.ops import VmInfo
from server.registry import Registry, vm_info

WAIT_SECONDS = 0.5  # longest a follower sleeps before re-checking cancellation
EVENTS_PER_MESSAGE = 1024


def get_vm(registry: Registry, vm_id: str, field: str = "name") -> VmInfo:
    with registry.locked(vm_id, field) as entry:
        return vm_info(entry)


def memslots(registry: Registry, vm_id: str, field: str = "parent") -> list[Memslot]:
    with registry.locked(vm_id, field) as entry:
        return sorted(entry.vm.memslots(), key=lambda s: s.id)


def memslot(registry: Registry, vm_id: str, slot_id: int) -> Memslot:
    for slot in memslots(registry, vm_id, "name"):
        if slot.id == slot_id:
            return slot
    raise ResourceNotFound(MEMSLOT_TYPE, memslot_name(vm_id, slot_id))


def dump(registry: Registry, query: DumpQuery) -> SpteArrays:
    with registry.locked(query.vm_id) as entry:
        return entry.vm.dump(
            start=query.start,
            end=query.end,
            level=query.level,
            only_present=query.only_present,
            include_nonleaf=query.include_nonleaf,
            root=query.root,
        )


@dataclass(frozen=True, slots=True)
class DecodeContext:
    view: VmView
    generation: int | None


def vm_decode_context(registry: Registry, vm_id: str) -> DecodeContext:
    with registry.locked(vm_id, "vm") as entry:
        vm = entry.vm
        return DecodeContext(VmView(vm.host, vm.shadow_mmio_value, vm.vm_type), vm.generation)


def host_decode_context(
    server_host: Host, profile: str | None, mmio_value: int | None, generation: int | None
) -> DecodeContext:
    host = server_host
    if profile is not None:
        if profile not in PROFILES:
            raise ResourceNotFound(
                "kvmmu.v1.HostProfile", f"hostProfiles/{profile}", field="host.host_profile"
            )
        host = derive_host(PROFILES[profile].config)
    value = host.shadow_mmio_value if mmio_value is None else mmio_value
    return DecodeContext(VmView(host, value), generation)


@dataclass(frozen=True, slots=True)
class EventBatch:
    host: Host
    events: list[tuple[int, Event]]
    lost: int


@dataclass(frozen=True, slots=True)
class Watch:
    """A subscription to a VM's event log: where it starts."""

    vm_id: str
    host: Host
    first_sequence: int


def start_watch(registry: Registry, vm_id: str, from_sequence: int | None) -> Watch:
    """Subscribe at `from_sequence`, or at the next event to be logged."""
    with registry.locked(vm_id) as entry:
        vm = entry.vm
        seq = vm.next_event_seq if from_sequence is None else from_sequence
        return Watch(vm_id, vm.host, seq)


def watch_events(
    registry: Registry,
    watch: Watch,
    follow: bool,
    names: frozenset[str],
    active: Callable[[], bool],
) -> Iterator[EventBatch]:
    """The VM's logged events from the watch's start, in batches; with `follow`, until
    the caller goes away, the VM is deleted (NOT_FOUND) or the server stops."""
    entry = registry.entry(watch.vm_id)
    seq = watch.first_sequence
    while True:
        with entry.lock:
            while True:
                if entry.deleted:
                    raise ResourceNotFound(VM_TYPE, vm_name(watch.vm_id))
                events, lost = entry.vm.events_since(seq)
                stop = not follow or registry.closed.is_set() or not active()
                if events or lost or stop:
                    break
                entry.changed.wait(WAIT_SECONDS)
        seq = events[-1][0] + 1 if events else seq + lost
        if names:
            events = [(s, e) for s, e in events if e[0] in names]
        for i in range(0, max(len(events), 1), EVENTS_PER_MESSAGE):
            part = events[i : i + EVENTS_PER_MESSAGE]
            if part or (lost and i == 0):
                yield EventBatch(watch.host, part, lost if i == 0 else 0)
        if stop:
            return


def check_from_sequence(present: bool, value: int) -> int | None:
    if not present:
        return None
    if value == 0:
        raise FieldError("sequence numbers start at 1", field="from_sequence")
    return value
