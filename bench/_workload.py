"""A mixed kvmmu workload: one `Worker` per client thread, every RPC in the mix.

Each worker owns a VM of its own (created, changed in every way, sometimes
deleted and re-created) and a lane of a VM shared by all workers, where it
only faults, zaps, ages and harvests dirty pages inside its own memslot, so
the shared VM's final state does not depend on how workers interleave (only
the physical addresses of page tables do). Reads of every kind are mixed in.

A worker records every acknowledged state change as (method, request,
response) in the order it made them, its latencies, its status codes, and
any status that is not one its operation may expect. Used by bench/load.py
and by tests/hardening/test_load.py (which replays what was acknowledged).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvmmu.v1 import (
    common_pb2,
    events_pb2,
    fault_pb2,
    host_pb2,
    memslot_pb2,
    service_pb2_grpc,
    spte_pb2,
    vm_pb2,
)

GiB: Final = 1 << 30
MiB: Final = 1 << 20
SHARED_ID: Final = "shared"
SHARED_SLOT_SIZE: Final = 64 * MiB
LANE: Final = 4 * GiB  # each of a worker's own memslots lives in its own lane
OWN_SLOT_SIZE: Final = 256 * MiB
ERROR_CODES: Final = (0, 1, 2, 3, 4, 6, 7, 0x10, 0x14)
MMIO_VALUES: Final = (6, 7, 5, 0, 0x8000000000000006, 0x8000000000000001)  # intel-ept mask
Code = grpc.StatusCode
FOLLOW: Final = "WatchEvents.follow"  # a follower's time is its own choice, not latency
STREAM_CODES: Final = frozenset({Code.RESOURCE_EXHAUSTED})  # max_concurrent_streams


def shared_slot(index: int) -> memslot_pb2.Memslot:
    """Worker `index`'s memslot in the shared VM: 64 MiB at (index + 1) * 2 GiB."""
    gpa = (index + 1) * 2 * GiB
    return memslot_pb2.Memslot(
        slot=index,
        guest_phys_addr=gpa,
        memory_size=SHARED_SLOT_SIZE,
        userspace_addr=0x7F0000000000 + gpa,
        host_pfn_base=0x1000000 + (gpa >> 12),
        backing_page_size=memslot_pb2.BACKING_PAGE_SIZE_2M if index % 2 else 0,
        log_dirty_pages=index % 3 == 0,
    )


def set_up_shared(
    stub: service_pb2_grpc.MmuServiceStub, workers: int, metadata: Any = ()
) -> list[tuple[str, Message, Message]]:
    """Create the shared VM and one memslot per worker; the acknowledged changes."""
    done: list[tuple[str, Message, Message]] = []
    request = vm_pb2.CreateVmRequest(vm_id=SHARED_ID, vm=vm_pb2.Vm(display_name="shared"))
    done.append(("CreateVm", request, stub.CreateVm(request, metadata=metadata)))
    for index in range(workers):
        slot = memslot_pb2.SetMemslotRequest(parent=f"vms/{SHARED_ID}", memslot=shared_slot(index))
        done.append(("SetMemslot", slot, stub.SetMemslot(slot, metadata=metadata)))
    return done


@dataclass
class OwnSlot:
    gpa: int
    dirty: bool


@dataclass
class Worker:
    """One client: its channel, its VM, and what it saw."""

    index: int
    channel: grpc.Channel
    seed: int = 0
    metadata: Any = ()
    record: bool = True
    acked: list[tuple[str, Message, Message]] = field(default_factory=list)
    codes: Counter[tuple[str, Code]] = field(default_factory=Counter)
    latencies: list[tuple[str, float]] = field(default_factory=list)  # (method, seconds)
    unexpected: list[str] = field(default_factory=list)
    vm: str | None = None
    vm_type: int = vm_pb2.VM_TYPE_DEFAULT
    generation: int = 0
    slots: dict[int, OwnSlot] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed * 1000 + self.index)
        self.stub = service_pb2_grpc.MmuServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.shared = shared_slot(self.index)

    # --- calling ------------------------------------------------------------------

    def call(
        self,
        method: str,
        request: Message,
        *,
        changes: bool = False,
        expect: frozenset[Code] = frozenset(),
        timeout: float = 20.0,
    ) -> Any:
        """One unary call; records it; returns the response or None on an error."""
        start = time.perf_counter()
        try:
            response = getattr(self.stub, method)(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            self._failed(method, error, expect, start)
            return None
        self.latencies.append((method, time.perf_counter() - start))
        self.codes[method, Code.OK] += 1
        if changes and self.record:
            self.acked.append((method, request, response))
        return response

    def stream(
        self,
        method: str,
        request: Message,
        *,
        expect: frozenset[Code] = STREAM_CODES,
        timeout: float = 20.0,
        label: str | None = None,
    ) -> list[Any] | None:
        """A server stream read to its end; `label` names it in latencies and codes."""
        start = time.perf_counter()
        try:
            messages = list(
                getattr(self.stub, method)(request, timeout=timeout, metadata=self.metadata)
            )
        except grpc.RpcError as error:
            self._failed(label or method, error, expect, start)
            return None
        self.latencies.append((label or method, time.perf_counter() - start))
        self.codes[label or method, Code.OK] += 1
        return messages

    def _failed(
        self, method: str, error: grpc.RpcError, expect: frozenset[Code], start: float
    ) -> None:
        assert isinstance(error, grpc.Call)
        code = error.code()
        self.latencies.append((method, time.perf_counter() - start))
        self.codes[method, code] += 1
        if code not in expect:
            self.unexpected.append(f"worker {self.index} {method}: {code.name} {error.details()}")

    # --- the loop -----------------------------------------------------------------

    def run(self, seconds: float) -> None:
        """Random operations until `seconds` have passed."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step()

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.35:
            self.shared_op()
        elif roll < 0.8:
            self.own_op()
        else:
            self.read_op()

    # --- the shared VM: only this worker's memslot -------------------------------------

    def shared_gpa(self) -> int:
        return self.shared.guest_phys_addr + (self.rng.randrange(SHARED_SLOT_SIZE) & ~0xFFF)

    def shared_range(self) -> common_pb2.GfnRange:
        base = self.shared.guest_phys_addr >> 12
        start = base + self.rng.randrange(SHARED_SLOT_SIZE >> 12)
        end = min(start + self.rng.choice([1, 16, 512, 4096]), base + (SHARED_SLOT_SIZE >> 12))
        return common_pb2.GfnRange(start_gfn=start, end_gfn=max(end, start + 1))

    def shared_op(self) -> None:
        name = f"vms/{SHARED_ID}"
        code = self.rng.choice(ERROR_CODES)
        kind = self.rng.random()
        if kind < 0.35:
            self.call(
                "Fault",
                fault_pb2.FaultRequest(name=name, gpa=self.shared_gpa(), error_code=code),
                changes=True,
            )
        elif kind < 0.65:
            gpas = [self.shared_gpa() for _ in range(self.rng.choice([8, 64, 256]))]
            self.call(
                "BatchFault",
                fault_pb2.BatchFaultRequest(name=name, gpas=gpas, shared_error_code=code),
                changes=True,
            )
        elif kind < 0.75:
            self.call(
                "ZapSptes",
                spte_pb2.ZapSptesRequest(name=name, gfn_range=self.shared_range()),
                changes=True,
            )
        elif kind < 0.85:
            request = spte_pb2.AgeSptesRequest(
                name=name, gfn_range=self.shared_range(), test_only=self.rng.random() < 0.3
            )
            self.call("AgeSptes", request, changes=True)
        elif kind < 0.92 and self.shared.log_dirty_pages:
            request = spte_pb2.GetDirtyLogRequest(name=f"{name}/memslots/{self.shared.slot}")
            self.call("GetDirtyLog", request, changes=True)
        else:
            request = spte_pb2.StreamSptesRequest(name=name, gfn_range=self.shared_range())
            self.stream("StreamSptes", request)

    # --- the worker's own VM -------------------------------------------------------

    def own_op(self) -> None:
        if self.vm is None:
            self.create_vm()
            return
        ops = (
            (0.22, self.own_fault),
            (0.14, self.own_batch),
            (0.14, self.set_memslot),
            (0.05, self.delete_memslot),
            (0.08, self.zap),
            (0.06, self.age),
            (0.06, self.dirty_log),
            (0.05, self.set_mmio_value),
            (0.05, self.update_vm),
            (0.06, self.attributes),
            (0.03, self.overlap),
            (0.01, self.watch_follow),
            (0.02, self.delete_vm),
        )
        roll = self.rng.random() * sum(w for w, _ in ops)
        for weight, op in ops:
            roll -= weight
            if roll <= 0:
                op()
                return

    def create_vm(self) -> None:
        self.generation += 1
        vm_id = f"w{self.index}-{self.generation}"
        self.vm_type = self.rng.choice([vm_pb2.VM_TYPE_DEFAULT, vm_pb2.VM_TYPE_SW_PROTECTED])
        vm = vm_pb2.Vm(
            vm_type=self.vm_type,  # type: ignore[arg-type]
            display_name=f"worker {self.index}",
            tracing_enabled=self.rng.random() < 0.5,
        )
        if self.call("CreateVm", vm_pb2.CreateVmRequest(vm_id=vm_id, vm=vm), changes=True):
            self.vm = f"vms/{vm_id}"
            self.slots = {}

    def own_gpa(self) -> int:
        if self.slots and self.rng.random() < 0.9:
            slot = self.slots[self.rng.choice(sorted(self.slots))]
            return slot.gpa + (self.rng.randrange(OWN_SLOT_SIZE) & ~0xFFF)
        return self.rng.randrange(4 * LANE) & ~0xFFF  # MMIO where no memslot is

    def own_range(self) -> common_pb2.GfnRange:
        start = self.own_gpa() >> 12
        return common_pb2.GfnRange(
            start_gfn=start, end_gfn=start + self.rng.choice([1, 512, 1 << 18])
        )

    def own_fault(self) -> None:
        assert self.vm is not None
        code = self.rng.choice(ERROR_CODES)
        request = fault_pb2.FaultRequest(name=self.vm, gpa=self.own_gpa(), error_code=code)
        self.call("Fault", request, changes=True)

    def own_batch(self) -> None:
        assert self.vm is not None
        gpas = [self.own_gpa() for _ in range(self.rng.choice([4, 64, 512]))]
        codes = [self.rng.choice(ERROR_CODES) for _ in gpas] if self.rng.random() < 0.5 else []
        request = fault_pb2.BatchFaultRequest(name=self.vm, gpas=gpas, error_codes=codes)
        self.call("BatchFault", request, changes=True)

    def set_memslot(self) -> None:
        """Create a missing slot, or change an existing one: MOVE, FLAGS_ONLY or no change."""
        assert self.vm is not None
        slot_id = self.rng.randrange(4)
        old = self.slots.get(slot_id)
        lane = slot_id * LANE
        gpa, dirty = lane, self.rng.random() < 0.3
        if old is not None:
            change = self.rng.choice(["move", "flags", "same"])
            gpa = (lane + GiB if old.gpa == lane else lane) if change == "move" else old.gpa
            dirty = (not old.dirty) if change == "flags" else old.dirty
        memslot = memslot_pb2.Memslot(
            slot=slot_id,
            guest_phys_addr=gpa,
            memory_size=OWN_SLOT_SIZE,
            userspace_addr=0x7F0000000000 + lane,
            host_pfn_base=0x400000 + (lane >> 12),
            backing_page_size=memslot_pb2.BACKING_PAGE_SIZE_2M if slot_id % 2 else 0,
            log_dirty_pages=dirty,
        )
        request = memslot_pb2.SetMemslotRequest(parent=self.vm, memslot=memslot)
        if self.call("SetMemslot", request, changes=True):
            self.slots[slot_id] = OwnSlot(gpa, dirty)

    def delete_memslot(self) -> None:
        if not self.slots:
            return
        slot_id = self.rng.choice(sorted(self.slots))
        request = memslot_pb2.DeleteMemslotRequest(name=f"{self.vm}/memslots/{slot_id}")
        if self.call("DeleteMemslot", request, changes=True):
            del self.slots[slot_id]

    def overlap(self) -> None:
        """A memslot overlapping slot 0: KVM's -EEXIST, which changes nothing."""
        if 0 not in self.slots:
            return
        memslot = memslot_pb2.Memslot(
            slot=9, guest_phys_addr=self.slots[0].gpa, memory_size=1 << 21
        )
        request = memslot_pb2.SetMemslotRequest(parent=self.vm, memslot=memslot)
        self.call("SetMemslot", request, changes=True, expect=frozenset({Code.ALREADY_EXISTS}))

    def zap(self) -> None:
        assert self.vm is not None
        kind = self.rng.random()
        if kind < 0.5:
            request = spte_pb2.ZapSptesRequest(name=self.vm, gfn_range=self.own_range())
        elif kind < 0.7 or not self.slots:
            request = spte_pb2.ZapSptesRequest(name=self.vm, all=True)
        else:
            request = spte_pb2.ZapSptesRequest(
                name=self.vm, slot=self.rng.choice(sorted(self.slots))
            )
        self.call("ZapSptes", request, changes=True)

    def age(self) -> None:
        request = spte_pb2.AgeSptesRequest(
            name=self.vm, gfn_range=self.own_range(), test_only=self.rng.random() < 0.3
        )
        self.call("AgeSptes", request, changes=True)

    def dirty_log(self) -> None:
        dirty = sorted(s for s, slot in self.slots.items() if slot.dirty)
        if not dirty:
            return
        request = spte_pb2.GetDirtyLogRequest(name=f"{self.vm}/memslots/{self.rng.choice(dirty)}")
        self.call("GetDirtyLog", request, changes=True)

    def set_mmio_value(self) -> None:
        zap = self.rng.random() < 0.7
        request = vm_pb2.SetMmioValueRequest(
            name=self.vm, value=self.rng.choice(MMIO_VALUES), zap_existing=zap
        )
        # Without zap_existing, MMIO SPTEs already cached make KVM's choice a refusal.
        expect = frozenset() if zap else frozenset({Code.FAILED_PRECONDITION})
        self.call("SetMmioValue", request, changes=True, expect=expect)

    def update_vm(self) -> None:
        vm = vm_pb2.Vm(
            name=self.vm,
            display_name=f"w{self.rng.randrange(100)}",
            tracing_enabled=self.rng.random() < 0.5,
        )
        paths = self.rng.choice(
            [["display_name"], ["tracing_enabled"], ["display_name", "tracing_enabled"]]
        )
        request = vm_pb2.UpdateVmRequest(vm=vm, update_mask={"paths": paths})
        self.call("UpdateVm", request, changes=True)

    def attributes(self) -> None:
        if self.vm_type != vm_pb2.VM_TYPE_SW_PROTECTED:
            return
        request = memslot_pb2.SetMemoryAttributesRequest(
            name=self.vm, gfn_range=self.own_range(), private=self.rng.random() < 0.5
        )
        self.call("SetMemoryAttributes", request, changes=True)

    def watch_follow(self) -> None:
        """A follower that gives up after a moment: DEADLINE_EXCEEDED is its normal end."""
        request = events_pb2.WatchEventsRequest(name=self.vm, follow=True)
        expect = STREAM_CODES | {Code.DEADLINE_EXCEEDED}
        self.stream("WatchEvents", request, expect=expect, timeout=0.05, label=FOLLOW)

    def delete_vm(self) -> None:
        if self.call("DeleteVm", vm_pb2.DeleteVmRequest(name=self.vm), changes=True) is not None:
            self.vm = None

    # --- reads ---------------------------------------------------------------------

    def read_op(self) -> None:
        vm = self.vm or f"vms/{SHARED_ID}"
        reads = (
            lambda: self.call("GetVm", vm_pb2.GetVmRequest(name=vm, view=vm_pb2.VM_VIEW_FULL)),
            lambda: self.call("GetVmStats", vm_pb2.GetVmStatsRequest(name=f"{vm}/stats")),
            lambda: self.call("ListVms", vm_pb2.ListVmsRequest(page_size=20)),
            lambda: self.call("ListMemslots", memslot_pb2.ListMemslotsRequest(parent=vm)),
            lambda: self.call(
                "GetMemslot",
                memslot_pb2.GetMemslotRequest(name=f"vms/{SHARED_ID}/memslots/{self.index}"),
            ),
            lambda: self.call("GetHost", host_pb2.GetHostRequest()),
            lambda: self.call("ListHostProfiles", host_pb2.ListHostProfilesRequest()),
            lambda: self.call(
                "DecodeSpte", spte_pb2.DecodeSpteRequest(value=self.rng.getrandbits(64), vm=vm)
            ),
            lambda: self.call(
                "DecodeSpte",
                spte_pb2.DecodeSpteRequest(
                    value=0x8600000200000BF7,
                    host=spte_pb2.DecodeHostContext(host_profile="hostProfiles/amd-npt"),
                ),
            ),
            lambda: self.stream(
                "StreamSptes", spte_pb2.StreamSptesRequest(name=vm, only_present=True)
            ),
            lambda: self.stream("WatchEvents", events_pb2.WatchEventsRequest(name=vm)),
            self.check_health,
        )
        self.rng.choice(reads)()

    def check_health(self) -> None:
        start = time.perf_counter()
        answer = self.health.Check(health_pb2.HealthCheckRequest(), timeout=20)
        self.latencies.append(("Health.Check", time.perf_counter() - start))
        self.codes["Health.Check", Code.OK] += 1
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            self.unexpected.append(f"worker {self.index}: health {answer.status}")
