"""The VMs a server owns, by id, with the locks that serialise access to them.

Lock order: the registry lock, then a VM's lock; nothing takes the registry
lock while holding a VM's lock. Operations on one VM are serialised by its
lock; different VMs proceed in parallel. Each VM's `changed` condition
shares that lock and is notified after every operation, so event watchers
wake up. With durable state, `journal` records every change (server.apply
appends to it under these locks; server.durability implements it). No gRPC here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from mmu.errors import LimitExceeded
from mmu.host import Host
from mmu.vm import Vm
from mmu.vmtypes import tdp_has_smep, tdp_root_access, tdp_root_level
from server.config import Limits
from server.errors import ResourceExists, ResourceNotFound
from server.names import VM_TYPE, vm_name
from server.ops import Op, VmInfo


class Journal(Protocol):
    """Where every change is recorded before it is acknowledged (see server.apply)."""

    def guard(self, op: Op[Any]) -> AbstractContextManager[object]:
        """Entered around the whole op, before any registry or VM lock."""
        ...

    def append(self, op: Op[Any], error: BaseException | None = None) -> int | None:
        """Record `op` (which took effect, or raised `error`) with its locks held."""
        ...

    def wait(self, seq: int) -> None:
        """Block until record `seq` is durable (no locks held)."""
        ...


@dataclass(eq=False)
class VmEntry:
    """One VM and what the server keeps beside the model."""

    vm: Vm
    create_time_ns: int
    initial_generation: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    deleted: bool = False

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)


def vm_info(entry: VmEntry) -> VmInfo:
    """Snapshot of a VM; call with entry.lock held."""
    vm = entry.vm
    state = vm.state
    host = vm.host
    mbec = host.config.kernel_layout == "mbec"  # the role fields exist only in that layout
    stats = vm.stats()
    tables = vm.tables()
    stats["direct_tables"] = tables["direct"]
    stats["mirror_tables"] = tables["mirror"]
    return VmInfo(
        vm_id=vm.id,
        display_name=vm.name,
        vm_type=int(vm.vm_type),
        mmio_value=vm.shadow_mmio_value,
        guest_maxphyaddr=state.guest_maxphyaddr,
        tdp_root_level=tdp_root_level(host, state.guest_maxphyaddr),
        nr_memslot_as_ids=vm.vm_type.nr_memslot_as_ids,
        memslots_generation=vm.generation & ~(1 << 63),
        create_time_ns=entry.create_time_ns,
        tracing=vm.tracing,
        gfn_direct_bits=state.gfn_direct_bits,
        slot_zap_all_quirk=state.slot_zap_all_quirk,
        mt_bits=state.mt_bits,
        initial_generation=entry.initial_generation,
        tdp_has_smep=tdp_has_smep(host, vm.vm_type) if mbec else None,
        tdp_root_access=tdp_root_access(host, vm.vm_type) if mbec else None,
        stats=stats,
    )


class Registry:
    """VMs by id, with the registry lock for create, delete and list."""

    def __init__(self, host: Host, limits: Limits) -> None:
        self.host = host
        self.limits = limits
        self._vms: dict[str, VmEntry] = {}
        self._lock = threading.Lock()
        self.closed = threading.Event()
        self.journal: Journal | None = None

    def entry(self, vm_id: str, field: str = "name") -> VmEntry:
        with self._lock:
            entry = self._vms.get(vm_id)
        if entry is None:
            raise ResourceNotFound(VM_TYPE, vm_name(vm_id), field=field)
        return entry

    @contextmanager
    def locked(self, vm_id: str, field: str = "name") -> Iterator[VmEntry]:
        """The VM's entry with its lock held; NOT_FOUND if it is (or becomes) deleted."""
        entry = self.entry(vm_id, field)
        with entry.lock:
            if entry.deleted:
                raise ResourceNotFound(VM_TYPE, vm_name(vm_id), field=field)
            try:
                yield entry
            finally:
                entry.changed.notify_all()

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._vms)

    def __len__(self) -> int:
        with self._lock:
            return len(self._vms)

    def insert(self, vm_id: str, make: Callable[[], VmEntry]) -> VmEntry:
        """Create a VM under the registry lock: id and limit checks, then the model."""
        with self._lock:
            if vm_id in self._vms:
                raise ResourceExists(VM_TYPE, vm_name(vm_id), field="vm_id")
            if len(self._vms) >= self.limits.max_vms:
                raise LimitExceeded(
                    f"the server already holds {self.limits.max_vms} VMs", limit="max_vms"
                )
            entry = make()
            self._vms[vm_id] = entry
            return entry

    def remove(self, vm_id: str, then: Callable[[], object] | None = None) -> None:
        """Delete a VM: waits for its in-flight operation, then wakes its watchers;
        `then` runs with both locks still held (the journal numbers the deletion there)."""
        with self._lock:
            entry = self._vms.get(vm_id)
            if entry is None:
                raise ResourceNotFound(VM_TYPE, vm_name(vm_id))
            with entry.lock:
                del self._vms[vm_id]
                entry.deleted = True
                entry.changed.notify_all()
                if then is not None:
                    then()

    def entries(self) -> list[VmEntry]:
        with self._lock:
            return list(self._vms.values())

    def wake(self, vm_id: str) -> None:
        """Wake the VM's watchers (a stream was cancelled)."""
        with self._lock:
            entry = self._vms.get(vm_id)
        if entry is not None:
            with entry.lock:
                entry.changed.notify_all()

    def snapshot(self, vm_id: str) -> VmInfo | None:
        """The VM's current snapshot, or None if it is gone."""
        with self._lock:
            entry = self._vms.get(vm_id)
        if entry is None:
            return None
        with entry.lock:
            return None if entry.deleted else vm_info(entry)

    def close(self) -> None:
        """Server shutdown: wake every watcher so streams end promptly."""
        self.closed.set()
        for entry in self.entries():
            with entry.lock:
                entry.changed.notify_all()
