"""What a durable server's state must be: fresh in-process models fed the acknowledged ops.

A `Candidates` holds, for one client's VM, every model state consistent with
what the client saw: the acknowledged ops applied in order, and for an op
whose reply never came (the server was killed), both outcomes (applied or
not). After a restart the server's state picks the candidates that match it;
none matching means an acknowledged change was lost or a half-applied one
appeared.

Fingerprints compare everything a client can see of a VM: GetVm (FULL view,
minus the creation time, which comes from the server's clock), its stats, its
memslots and a StreamSptes dump with non-leaf entries; the model's side is
built with the server's own converters.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import Message

from kvmmu.v1 import memslot_pb2, service_pb2_grpc, spte_pb2, vm_pb2
from mmu.snapshot import restore_vm, snapshot_vm
from server import ops
from server.apply import apply
from server.config import Limits, ServerConfig
from server.convert import fault as fault_conv
from server.convert import memslot as memslot_conv
from server.convert import tables as tables_conv
from server.convert import vm as vm_conv
from server.registry import Registry, VmEntry, vm_info

OpFactory = Callable[[], ops.Op[Any]]
HOST = ServerConfig().host()


@dataclass(frozen=True)
class Fingerprint:
    vm: bytes
    stats: bytes
    memslots: tuple[bytes, ...]
    sptes: tuple[tuple[int, ...], ...]

    @property
    def slots(self) -> list[memslot_pb2.Memslot]:
        return [memslot_pb2.Memslot.FromString(m) for m in self.memslots]

    @property
    def vm_type(self) -> int:
        return int(vm_pb2.Vm.FromString(self.vm).vm_type)


def _vm_bytes(vm: vm_pb2.Vm) -> bytes:
    vm.ClearField("create_time")
    return vm.SerializeToString(deterministic=True)


def server_fingerprint(stub: service_pb2_grpc.MmuServiceStub, vm_id: str) -> Fingerprint | None:
    name = f"vms/{vm_id}"
    try:
        vm = stub.GetVm(vm_pb2.GetVmRequest(name=name, view=vm_pb2.VM_VIEW_FULL), timeout=30)
    except grpc.RpcError as err:
        assert isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.NOT_FOUND, err
        return None
    stats = stub.GetVmStats(vm_pb2.GetVmStatsRequest(name=f"{name}/stats"), timeout=30)
    slots = stub.ListMemslots(
        memslot_pb2.ListMemslotsRequest(parent=name, page_size=1000), timeout=30
    ).memslots
    gfns: list[int] = []
    levels: list[int] = []
    values: list[int] = []
    roots: list[int] = []
    request = spte_pb2.StreamSptesRequest(name=name, include_non_leaf=True)
    for chunk in stub.StreamSptes(request, timeout=60):
        gfns += chunk.gfns
        levels += chunk.levels
        values += chunk.values
        roots += chunk.roots
    return Fingerprint(
        _vm_bytes(vm),
        stats.SerializeToString(deterministic=True),
        tuple(m.SerializeToString(deterministic=True) for m in slots),
        (tuple(gfns), tuple(levels), tuple(values), tuple(roots)),
    )


def model_fingerprint(registry: Registry, vm_id: str) -> Fingerprint | None:
    if vm_id not in registry.ids():
        return None
    with registry.locked(vm_id) as entry:
        info = vm_info(entry)
        slots = sorted(entry.vm.memslots(), key=lambda s: s.id)
        dump = entry.vm.dump(include_nonleaf=True)
    return Fingerprint(
        _vm_bytes(vm_conv.vm_to_proto(info, vm_pb2.VM_VIEW_FULL)),
        vm_conv.stats_to_proto(info).SerializeToString(deterministic=True),
        tuple(
            memslot_conv.memslot_to_proto(vm_id, s).SerializeToString(deterministic=True)
            for s in slots
        ),
        tuple(tuple(int(x) for x in a) for a in (dump.gfns, dump.levels, dump.values, dump.trees)),
    )


def fresh_registry() -> Registry:
    return Registry(HOST, Limits())


def copy_registry(registry: Registry) -> Registry:
    """An independent copy (through mmu.snapshot: same state, same future behaviour)."""
    out = fresh_registry()
    for entry in registry.entries():
        vm = restore_vm(HOST, snapshot_vm(entry.vm))
        copy = VmEntry(vm, entry.create_time_ns, entry.initial_generation)
        out.insert(vm.id, lambda copy=copy: copy)  # type: ignore[misc]
    return out


# The replies that reveal state a dump does not show (the dirty bitmap, the vCPU's MMIO
# cache, access bits), built from a model result with the server's own converters.
REPLIES: dict[str, Callable[[Any], Message]] = {
    "fault": lambda r: fault_conv.fault_response(HOST, r),
    "batch_fault": fault_conv.batch_response,
    "get_dirty_log": tables_conv.dirty_log_response,
    "age": tables_conv.age_response,
    "zap": tables_conv.zap_response,
}


def run(registry: Registry, make: OpFactory, reply: Message | None = None) -> bool:
    """Apply an op to a model; False if it is rejected (as the server would reject it),
    or if `reply` (the server's) differs from the model's."""
    try:
        op = make()
        result = apply(registry, op)
    except Exception:
        return False
    convert = REPLIES.get(op.name)
    return reply is None or convert is None or convert(result) == reply


@dataclass
class Candidates:
    """The model states one client's VM may be in, given what the client was told."""

    vm_id: str
    states: list[Registry] = field(default_factory=lambda: [fresh_registry()])
    acked: int = 0
    # Of the ops whose reply never came: found applied, found not applied, undecidable.
    outcomes: dict[str, int] = field(
        default_factory=lambda: {"present": 0, "absent": 0, "either": 0}
    )
    _with_pending: set[int] = field(default_factory=set)
    _pending: bool = False

    def acknowledged(self, make: OpFactory, succeeded: bool, reply: Message | None) -> None:
        """The server answered: the op took effect with this reply (or was rejected) in
        every true state."""
        self.states = [s for s in self.states if run(s, make, reply) == succeeded]
        self.acked += 1
        assert self.states, f"{self.vm_id}: the server's answer matches no model state"

    def unacknowledged(self, make: OpFactory) -> None:
        """No answer: the op may or may not have taken effect."""
        with_op = []
        for state in self.states:
            copy = copy_registry(state)
            if run(copy, make):
                with_op.append(copy)
        self._with_pending = {id(s) for s in with_op}
        self._pending = True
        self.states = [*self.states, *with_op]

    def match(self, observed: Fingerprint | None) -> None:
        """Keep the states the server's state equals; one at least must."""
        seen = [model_fingerprint(s, self.vm_id) for s in self.states]
        kept = [s for s, fp in zip(self.states, seen, strict=True) if fp == observed]
        assert kept, (
            f"{self.vm_id}: the recovered state equals no consistent outcome "
            f"({len(self.states)} candidates; server has {'no VM' if observed is None else 'a VM'})"
        )
        if self._pending:
            present = {id(s) in self._with_pending for s in kept}
            key = "either" if len(present) > 1 else ("present" if True in present else "absent")
            self.outcomes[key] += 1
            self._pending = False
        unique: dict[bytes, Registry] = {}
        for state in kept:
            unique.setdefault(_full_state(state), state)
        self.states = list(unique.values())
        assert len(self.states) <= 64, f"{self.vm_id}: {len(self.states)} indistinguishable states"


def _full_state(registry: Registry) -> bytes:
    """Everything a VM's future depends on (its snapshot's arrays; the zip around them
    carries timestamps)."""
    digest = hashlib.sha256()
    for entry in registry.entries():
        with np.load(io.BytesIO(snapshot_vm(entry.vm)), allow_pickle=False) as npz:
            for name in sorted(npz.files):
                data = npz[name].tobytes()
                digest.update(f"{name}:{len(data)}:".encode() + data)
        digest.update(repr((entry.create_time_ns, entry.initial_generation)).encode())
    return digest.digest()


def batch_gpas(rng: np.random.Generator, count: int, limit: int) -> list[int]:
    return [int(x) << 12 for x in rng.integers(0, limit >> 12, count)]
