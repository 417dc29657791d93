"""Mutation load for the crash test: one client thread per VM, random ops, every
answer recorded (acknowledged success, acknowledged rejection, or no answer)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from kvmmu.v1 import common_pb2, fault_pb2, memslot_pb2, service_pb2_grpc, spte_pb2, vm_pb2
from server import ops
from server.config import Limits
from server.convert import fault as fault_conv
from server.convert import memslot as memslot_conv
from server.convert import tables as tables_conv
from server.convert import vm as vm_conv
from tests.server.durable_model import HOST, Fingerprint, OpFactory

MiB = 1 << 20
GiB = 1 << 30
SLOT_SIZE = 64 * MiB
SLOT_HOMES = {0: (0, 2 * GiB), 1: (GiB, 3 * GiB)}  # slot -> the two addresses it moves between
GPA_LIMIT = 4 * GiB
Call = Callable[..., Any]


@dataclass
class Belief:
    """What the client believes about its VM (wrong beliefs only cause rejections)."""

    exists: bool = False
    sw_protected: bool = False
    slots: dict[int, tuple[int, bool]] = field(default_factory=dict)  # slot -> (gpa, dirty)

    @staticmethod
    def of(fingerprint: Fingerprint | None) -> Belief:
        if fingerprint is None:
            return Belief()
        slots = {m.slot: (m.guest_phys_addr, m.log_dirty_pages) for m in fingerprint.slots}
        return Belief(True, fingerprint.vm_type == vm_pb2.VM_TYPE_SW_PROTECTED, slots)


@dataclass
class Answer:
    make: OpFactory
    acked: bool
    succeeded: bool = False
    reply: Message | None = None


def _op(stub: service_pb2_grpc.MmuServiceStub, belief: Belief, vm_id: str,
        rng: np.random.Generator) -> tuple[Call, Any, OpFactory, Callable[[], None]]:  # fmt: skip
    """One random request: the RPC, its request, its op record, and the belief update."""
    name = f"vms/{vm_id}"
    nothing: Callable[[], None] = lambda: None  # noqa: E731
    if not belief.exists:
        kind = int(rng.choice([vm_pb2.VM_TYPE_DEFAULT, vm_pb2.VM_TYPE_SW_PROTECTED]))
        request = vm_pb2.CreateVmRequest(
            vm_id=vm_id,
            vm=vm_pb2.Vm(
                vm_type=vm_pb2.VmType.ValueType(kind), tracing_enabled=bool(rng.random() < 0.15)
            ),
        )

        def created() -> None:
            belief.exists, belief.slots = True, {}
            belief.sw_protected = kind == vm_pb2.VM_TYPE_SW_PROTECTED

        return stub.CreateVm, request, lambda: vm_conv.create_vm_op(request, 0), created
    choice = rng.choice(
        ["fault", "batch", "slot", "move", "dirty", "unslot", "zap", "zap_all", "zap_slot",
         "log", "age", "update", "mmio", "attrs", "delete"],
        p=[.26, .2, .08, .04, .04, .02, .05, .02, .02, .09, .05, .04, .02, .06, .01],
    )  # fmt: skip
    slot = int(rng.integers(0, 2))
    if choice == "fault":
        gpa = int(rng.integers(0, GPA_LIMIT >> 12)) << 12
        code = int(rng.choice([0x2, 0x0, 0x4, 0x6, 0x10]))
        fault = fault_pb2.FaultRequest(name=name, gpa=gpa, error_code=code)
        return stub.Fault, fault, lambda: fault_conv.fault_op(fault), nothing
    if choice == "batch":
        count = int(rng.integers(1, 600))
        home = [g for g, _ in belief.slots.values()] or [0]
        bases = rng.choice(home, count)
        gpas = (bases + rng.integers(0, SLOT_SIZE >> 12, count) * 4096).astype(np.uint64)
        batch = fault_pb2.BatchFaultRequest(name=name, gpas=gpas.tolist())
        if rng.random() < 0.3:
            batch.error_codes.extend(rng.choice([0, 2, 4, 6], count).tolist())
        else:
            batch.shared_error_code = int(rng.choice([0, 2, 6]))
        return stub.BatchFault, batch, lambda: fault_conv.batch_fault_op(batch, Limits()), nothing
    if choice in ("slot", "move", "dirty"):
        fresh = (SLOT_HOMES[slot][0], bool(rng.random() < 0.5))
        gpa, dirty = belief.slots.get(slot, fresh)
        if choice == "move":
            gpa = SLOT_HOMES[slot][1] if gpa == SLOT_HOMES[slot][0] else SLOT_HOMES[slot][0]
        elif choice == "dirty":
            dirty = not dirty
        memslot = memslot_pb2.Memslot(
            slot=slot,
            guest_phys_addr=gpa,
            memory_size=SLOT_SIZE,
            log_dirty_pages=dirty,
            userspace_addr=0x7F0000000000 + slot * GiB,
            host_pfn_base=0x200000 + slot * (SLOT_SIZE >> 12),
            backing_page_size=(
                memslot_pb2.BACKING_PAGE_SIZE_2M if slot else memslot_pb2.BACKING_PAGE_SIZE_4K
            ),
        )
        setslot = memslot_pb2.SetMemslotRequest(parent=name, memslot=memslot)

        def set_slot() -> None:
            belief.slots[slot] = (gpa, dirty)

        return stub.SetMemslot, setslot, lambda: memslot_conv.set_memslot_op(setslot), set_slot
    if choice == "unslot":
        unslot = memslot_pb2.DeleteMemslotRequest(name=f"{name}/memslots/{slot}")
        return (
            stub.DeleteMemslot,
            unslot,
            lambda: memslot_conv.delete_memslot_op(unslot),
            lambda: belief.slots.pop(slot, None) and None,
        )
    if choice in ("zap", "zap_all", "zap_slot"):
        start = int(rng.integers(0, GPA_LIMIT >> 12))
        zap = spte_pb2.ZapSptesRequest(name=name)
        if choice == "zap":
            zap.gfn_range.CopyFrom(common_pb2.GfnRange(start_gfn=start, end_gfn=start + 4096))
        elif choice == "zap_all":
            zap.all = True
        else:
            zap.slot = slot
        return stub.ZapSptes, zap, lambda: tables_conv.zap_op(zap), nothing
    if choice == "log":
        logging = [s for s, (_, dirty) in belief.slots.items() if dirty]
        slot = int(rng.choice(logging)) if logging else slot
        log = spte_pb2.GetDirtyLogRequest(name=f"{name}/memslots/{slot}")
        return stub.GetDirtyLog, log, lambda: tables_conv.dirty_log_op(log), nothing
    if choice == "age":
        start = int(rng.integers(0, GPA_LIMIT >> 12))
        age = spte_pb2.AgeSptesRequest(
            name=name,
            gfn_range=common_pb2.GfnRange(start_gfn=start, end_gfn=start + 65536),
            test_only=bool(rng.random() < 0.3),
        )
        return stub.AgeSptes, age, lambda: tables_conv.age_op(age), nothing
    if choice == "update":
        update = vm_pb2.UpdateVmRequest(
            vm=vm_pb2.Vm(name=name, display_name=f"n{rng.integers(1000)}",
                         tracing_enabled=bool(rng.random() < 0.2)),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name", "tracing_enabled"]),
        )  # fmt: skip
        return stub.UpdateVm, update, lambda: vm_conv.update_vm_op(update), nothing
    if choice == "mmio":
        mmio = vm_pb2.SetMmioValueRequest(
            name=name, value=HOST.shadow_mmio_value, zap_existing=True
        )
        return stub.SetMmioValue, mmio, lambda: vm_conv.set_mmio_value_op(mmio), nothing
    if choice == "attrs":
        start = int(rng.integers(0, (2 * GiB) >> 12))
        attrs = memslot_pb2.SetMemoryAttributesRequest(
            name=name,
            gfn_range=common_pb2.GfnRange(start_gfn=start, end_gfn=start + 512),
            private=bool(rng.random() < 0.6),
        )
        return (
            stub.SetMemoryAttributes,
            attrs,
            lambda: memslot_conv.set_memory_attributes_op(attrs),
            nothing,
        )
    delete = vm_pb2.DeleteVmRequest(name=name)

    def deleted() -> None:
        belief.exists = False

    return stub.DeleteVm, delete, lambda: ops.DeleteVm(vm_id), deleted


def _answered(err: grpc.RpcError) -> bool:
    """An error the server sent (it carries kvmmu's rich status), not a dropped connection."""
    assert isinstance(err, grpc.Call)
    trailers = err.trailing_metadata() or ()
    return any(key == "grpc-status-details-bin" for key, _ in trailers)


class Client(threading.Thread):
    """Sends random ops for one VM until the server stops answering."""

    def __init__(
        self, channel: grpc.Channel, vm_id: str, belief: Belief, seed: int, pause: float = 0.0
    ) -> None:
        super().__init__(name=f"crash-client-{vm_id}", daemon=True)
        self.stub = service_pb2_grpc.MmuServiceStub(channel)
        self.vm_id = vm_id
        self.belief = belief
        self.rng = np.random.default_rng(seed)
        self.answers: list[Answer] = []
        self.pause = pause

    def run(self) -> None:
        while True:
            call, request, make, update = _op(self.stub, self.belief, self.vm_id, self.rng)
            try:
                reply = call(request, timeout=20)
            except grpc.RpcError as err:
                if not _answered(err):
                    self.answers.append(Answer(make, acked=False))
                    return
                self.answers.append(Answer(make, acked=True, succeeded=False))
                continue
            self.answers.append(Answer(make, acked=True, succeeded=True, reply=reply))
            update()
