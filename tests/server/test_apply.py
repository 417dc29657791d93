"""The apply layer on its own (no gRPC): operation records replay to the same state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmu.errors import ModelError
from mmu.memslots import Memslot
from server import ops
from server.apply import apply
from server.config import Limits, ServerConfig
from server.registry import Registry

pytestmark = pytest.mark.timeout(60)


def script() -> list[ops.Op[object]]:
    slot = Memslot(0, base_gfn=0x100, npages=0x4000, userspace_addr=0x100000)
    return [
        ops.CreateVm("a", display_name="first", tracing=True, create_time_ns=1),
        ops.CreateVm("b", vm_type=1, create_time_ns=2),
        ops.SetMemslot("a", slot=slot),
        ops.Fault("a", gpa=0x100000, error_code=2),
        ops.BatchFault("a", gpas=np.arange(0x101, 0x301, dtype=np.uint64) << np.uint64(12)),
        ops.Fault("a", gpa=0xFEE00000),
        ops.SetMemslot("a", slot=Memslot(0, 0x100, 0x4000, 1, userspace_addr=0x100000)),
        ops.Fault("a", gpa=0x102000, error_code=3),
        ops.GetDirtyLog("a", slot_id=0),
        ops.Age("a", start_gfn=0, end_gfn=1 << 20),
        ops.Zap("a", kind="range", start_gfn=0x100, end_gfn=0x110),
        ops.SetMemslot("a", slot=Memslot(1, 0x80000, 16)),
        ops.UpdateVm("a", display_name="renamed", tracing=False),
        ops.DeleteMemslot("a", slot_id=1),
        ops.SetMemoryAttributes("b", start_gfn=0, end_gfn=512, private=True),
        ops.SetMmioValue("a", value=0, zap_existing=True),
        ops.CreateVm("c", create_time_ns=3),
        ops.DeleteVm("c"),
        ops.Zap("a", kind="all"),
        ops.Fault("a", gpa=0x103000, error_code=2),
    ]


def state(registry: Registry) -> dict[str, object]:
    out: dict[str, object] = {}
    for entry in registry.entries():
        vm = entry.vm
        dump = vm.dump(include_nonleaf=True)
        out[vm.id] = (
            vm.name,
            vm.tracing,
            vm.shadow_mmio_value,
            vm.generation,
            vm.stats(),
            [list(e) for _s, e in vm.event_log],
            dump.gfns.tolist(),
            dump.values.tolist(),
            [(s.id, s.base_gfn, s.flags) for s in vm.memslots()],
        )
    return out


def test_replaying_serialised_ops_rebuilds_the_same_state():
    config = ServerConfig()
    live = Registry(config.host(), Limits())
    journal: list[str] = []
    for op in script():
        apply(live, op)
        journal.append(json.dumps(ops.op_to_dict(op)))
    replayed = Registry(config.host(), Limits())
    for line in journal:
        apply(replayed, ops.op_from_dict(json.loads(line)))
    assert state(replayed) == state(live)
    assert sorted(state(live)) == ["a", "b"]


def test_rejected_op_changes_nothing():
    registry = Registry(ServerConfig().host(), Limits(max_memslots_per_vm=1))
    apply(registry, ops.CreateVm("a"))
    apply(registry, ops.SetMemslot("a", slot=Memslot(0, 0, 16)))
    before = state(registry)
    for bad in (
        ops.SetMemslot("a", slot=Memslot(1, 8, 16)),  # limit
        ops.SetMemslot("a", slot=Memslot(0, 0, 32)),  # resize
        ops.Fault("a", gpa=1 << 60),
        ops.BatchFault("a", gpas=np.array([0x1000, 1 << 60], dtype=np.uint64)),
        ops.CreateVm("a"),
        ops.DeleteMemslot("a", slot_id=5),
    ):
        with pytest.raises(ModelError):
            apply(registry, bad)
    assert state(registry) == before
