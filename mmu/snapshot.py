"""A VM's complete MMU state as bytes, and back.

Restoring gives a VM that behaves exactly like the original from then on
(same table slots, free list and allocation numbers, so even future non-leaf
SPTE values match). The container is numpy's .npz (a zip of arrays plus one
JSON document); integrity checks (checksums) belong to whoever stores it.
The per-VM event history is not kept, only its sequence counter: events are
observations, not state.
"""

from __future__ import annotations

import io
import json
from typing import Any, Final

import numpy as np

from mmu.errors import InvalidInput
from mmu.host import Host
from mmu.memslots import Memslot, SlotState
from mmu.state import MmioCache, Stats
from mmu.vm import Vm
from mmu.vmtypes import VmType

FORMAT: Final = "kvmmu-vm-snapshot/1"


def snapshot_vm(vm: Vm) -> bytes:
    state = vm.state
    pool = state.pool
    live = pool.live_slots()
    slots = state.memslots.states()
    cache = state.mmio_cache
    meta: dict[str, Any] = {
        "format": FORMAT,
        "host": state.host.config.to_dict(),
        "vm": {
            "id": vm.id,
            "name": vm.name,
            "type": int(state.vm_type),
            "guest_maxphyaddr": state.guest_maxphyaddr,
            "mt_bits": state.mt_bits,
            "slot_zap_all_quirk": state.slot_zap_all_quirk,
            "tracing": vm.tracing,
            "max_tables": pool.max_tables,
            "event_history": vm.event_log.maxlen,
            "next_event_seq": vm.next_event_seq,
            "ops_applied": vm.ops_applied,
            "shadow_mmio_value": state.shadow_mmio_value,
            "generation": state.memslots.generation,
            "mmu_valid_gen": state.mmu_valid_gen,
        },
        "memslots": [
            {
                "slot": {name: getattr(s.slot, name) for name in Memslot.__slots__},
                "dirty": s.dirty_bitmap is not None,
                "mixed": {str(level): sorted(frames) for level, frames in s.mixed.items()},
            }
            for s in slots
        ],
        "attributes": state.attributes.intervals(),
        "roots": [state.direct_root, state.mirror_root],
        "mmio_cache": None if cache is None else [cache.gfn, cache.access, cache.generation],
        "stats": state.stats.as_dict(),
        "pool": {"high_water": pool.high_water, "next_serial": pool.next_serial},
    }
    arrays: dict[str, np.ndarray] = {
        "live": live,
        "entries": pool.entries[live],
        "level": pool.level[live],
        "gfn": pool.gfn[live],
        "serial": pool.serial[live],
        "tree": pool.tree[live],
        "nx_disallowed": pool.nx_disallowed[live],
        "nx_listed": pool.nx_listed[live],
        "free": np.array(pool.free, dtype=np.int64),
    }
    for i, s in enumerate(slots):
        if s.dirty_bitmap is not None:
            arrays[f"dirty{i}"] = s.dirty_bitmap
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    savez: Any = np.savez  # its stubs mistake array keyword arguments for allow_pickle
    savez(buffer, **arrays)
    return buffer.getvalue()


def snapshot_host_config(data: bytes) -> dict[str, Any]:
    """The host inputs a snapshot was taken on (to check it matches before restoring)."""
    meta = _meta(np.load(io.BytesIO(data), allow_pickle=False))
    host: dict[str, Any] = meta["host"]
    return host


def _meta(npz: Any) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(bytes(npz["meta"]).decode())
    if meta.get("format") != FORMAT:
        raise InvalidInput(
            f"not a {FORMAT} snapshot (found {meta.get('format')!r})", field="snapshot"
        )
    return meta


def restore_vm(host: Host, data: bytes) -> Vm:
    """Rebuild the VM a snapshot describes, on `host` (which must match its host)."""
    npz = np.load(io.BytesIO(data), allow_pickle=False)
    meta = _meta(npz)
    if meta["host"] != host.config.to_dict():
        raise InvalidInput("the snapshot was taken on another host configuration", field="snapshot")
    v = meta["vm"]
    vm = Vm(
        host,
        VmType(v["type"]),
        vm_id=v["id"],
        name=v["name"],
        guest_maxphyaddr=v["guest_maxphyaddr"],
        mt_bits=v["mt_bits"],
        slot_zap_all_quirk=v["slot_zap_all_quirk"],
        initial_generation=v["generation"],
        tracing=v["tracing"],
        max_tables=v["max_tables"],
        event_history=v["event_history"],
    )
    vm.next_event_seq = v["next_event_seq"]
    vm.ops_applied = v["ops_applied"]
    state = vm.state
    state.shadow_mmio_value = v["shadow_mmio_value"]
    state.mmu_valid_gen = v.get("mmu_valid_gen", 0)  # not in snapshots before it was modelled
    for i, entry in enumerate(meta["memslots"]):
        slot = Memslot(**entry["slot"])
        bitmap = np.array(npz[f"dirty{i}"], dtype=np.uint64) if entry["dirty"] else None
        slot_state = SlotState(slot, bitmap)
        slot_state.mixed = {int(level): set(frames) for level, frames in entry["mixed"].items()}
        state.memslots.install(slot_state)
    for start, end in meta["attributes"]:
        state.attributes.set(start, end, True)
    state.direct_root, state.mirror_root = meta["roots"]
    cache = meta["mmio_cache"]
    state.mmio_cache = None if cache is None else MmioCache(*cache)
    state.stats = Stats(**meta["stats"])
    pool = state.pool
    live = np.array(npz["live"], dtype=np.int64)
    pool.high_water = meta["pool"]["high_water"]
    pool.next_serial = meta["pool"]["next_serial"]
    pool.entries[live] = npz["entries"]
    pool.level[live] = npz["level"]
    pool.gfn[live] = npz["gfn"]
    pool.serial[live] = npz["serial"]
    pool.tree[live] = npz["tree"]
    pool.nx_disallowed[live] = npz["nx_disallowed"]
    pool.nx_listed[live] = npz["nx_listed"]
    pool.slot_of_serial[pool.serial[live]] = live
    pool.free = [int(s) for s in npz["free"]]
    pool.live = len(live)
    return vm
