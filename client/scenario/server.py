"""The server backend: the scenario's VMs live on a kvmmu server for the run.

VMs get a run-specific id (so scenarios never collide with other VMs on the
server) and are deleted afterwards. Results are reported in exactly the
shape of the offline backend, so both can be compared value for value.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import fields
from typing import Any

from client.client import Client
from client.commands.spte_columns import model_host
from client.enums import BackingPageSize, FaultOutcome, MemslotChangeResult, VmType
from client.errors import KvmmuError
from client.scenario.backend import Row, StepFailed
from client.scenario.format import Scenario, VmSpec
from client.types import MemslotChangeOutcome
from mmu.errors import ModelError
from mmu.memslots import Memslot
from mmu.profiles import host_config
from mmu.state import STAT_NAMES

RESULTS = {
    MemslotChangeResult.APPLIED: "ok",
    MemslotChangeResult.NOOP: "noop",
    MemslotChangeResult.MOVE_REVERTED: "EINVAL",
}
BACKING = {1: BackingPageSize.SIZE_4K, 2: BackingPageSize.SIZE_2M, 3: BackingPageSize.SIZE_1G}


def outcome_name(outcome: FaultOutcome | None) -> str | None:
    """The model's name for a fault outcome: RET_PF_* or the errno name."""
    if outcome is None:
        return None
    return f"RET_PF_{outcome.name}" if outcome.value <= 6 else outcome.name


def _memslot(outcome: MemslotChangeOutcome) -> dict[str, Any]:
    return {
        "result": RESULTS.get(outcome.result, outcome.result.label),
        "generation": outcome.generation,
        "zap": outcome.zap.name.lower(),
        "spte_changes": outcome.spte_changes,
    }


class ServerBackend:
    def __init__(self, client: Client, scenario: Scenario) -> None:
        self.client = client
        self.run_id = secrets.token_hex(3)
        self.ids: dict[str, str] = {}
        try:
            server = client.get_host()
            self.host, differ = model_host(server)
            wanted = host_config(scenario.profile, **scenario.host_set)
        except KvmmuError as exc:
            raise StepFailed(f"host: {exc.message}") from None
        except ModelError as exc:
            raise StepFailed(f"host: {exc}") from None
        if differ:
            raise StepFailed(f"the server's host globals {differ} differ from the model's")
        if wanted != self.host.config:
            have = self.host.config
            diffs = [
                f"{f.name}={getattr(wanted, f.name)!r} (server: {getattr(have, f.name)!r})"
                for f in fields(wanted)
                if getattr(wanted, f.name) != getattr(have, f.name)
            ]
            raise StepFailed(
                f"the scenario needs host profile {scenario.profile!r}"
                + (f" with {scenario.host_set}" if scenario.host_set else "")
                + f", the server runs profile {server.profile!r}: {', '.join(diffs)} "
                "(start the server with that profile, or run with --offline)"
            )

    def _id(self, vm: str) -> str:
        return self.ids[vm]

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KvmmuError as exc:
            raise StepFailed(exc.message) from None

    def create_vm(self, spec: VmSpec) -> None:
        vm_id = f"sc{self.run_id}-{spec.id.lower().replace('_', '-')}"[:63]
        kvm_type = int(VmType.from_label(spec.type).kvm_type)
        self._call(
            self.client.create_vm,
            VmType(kvm_type + 1),
            vm_id=vm_id,
            guest_maxphyaddr=spec.guest_maxphyaddr or 0,
            tracing_enabled=spec.tracing,
        )
        self.ids[spec.id] = vm_id

    def mmio_value(self, vm: str) -> int:
        value: int = self._call(self.client.get_vm, self._id(vm)).mmio_value
        return value

    def guest_maxphyaddr(self, vm: str) -> int:
        value: int = self._call(self.client.get_vm, self._id(vm)).guest_maxphyaddr
        return value

    def _set(self, vm: str, slot: Memslot) -> dict[str, Any]:
        result = self._call(
            self.client.set_memslot,
            self._id(vm),
            slot.id,
            guest_phys_addr=slot.base_gfn << 12,
            memory_size=slot.npages << 12,
            userspace_addr=slot.userspace_addr,
            log_dirty_pages=slot.log_dirty,
            readonly=slot.readonly,
            guest_memfd=slot.guest_memfd,
            host_pfn_base=slot.host_pfn_base,
            backing_page_size=BACKING[slot.backing_level],
            gmem_pfn_base=slot.gmem_pfn_base,
        )
        return _memslot(result.outcome)

    def set_memslot(self, vm: str, slot: Memslot) -> dict[str, Any]:
        return self._set(vm, slot)

    def _existing(self, vm: str, slot: int) -> Memslot:
        m = self._call(self.client.get_memslot, self._id(vm), slot)
        return Memslot(
            id=m.slot,
            base_gfn=m.guest_phys_addr >> 12,
            npages=m.memory_size >> 12,
            flags=(1 if m.log_dirty_pages else 0)
            | (2 if m.readonly else 0)
            | (4 if m.guest_memfd else 0),
            userspace_addr=m.userspace_addr,
            host_pfn_base=m.host_pfn_base,
            backing_level={v: k for k, v in BACKING.items()}[m.backing_page_size],
            gmem_pfn_base=m.gmem_pfn_base,
        )

    def delete_memslot(self, vm: str, slot: int) -> dict[str, Any]:
        return _memslot(self._call(self.client.delete_memslot, self._id(vm), slot).outcome)

    def move_memslot(self, vm: str, slot: int, base_gfn: int) -> dict[str, Any]:
        old = self._existing(vm, slot)
        return self._set(vm, Memslot(**{**_slot_fields(old), "base_gfn": base_gfn}))

    def dirty_logging(self, vm: str, slot: int, enable: bool) -> dict[str, Any]:
        old = self._existing(vm, slot)
        flags = (old.flags | 1) if enable else (old.flags & ~1)
        return self._set(vm, Memslot(**{**_slot_fields(old), "flags": flags}))

    def get_dirty_log(self, vm: str, slot: int) -> dict[str, Any]:
        log = self._call(self.client.get_dirty_log, self._id(vm), slot)
        return {"dirty": list(log.dirty_page_offsets), "spte_changes": log.spte_changes}

    def attributes(self, vm: str, start: int, end: int, private: bool) -> dict[str, Any]:
        result = self._call(
            self.client.set_memory_attributes,
            self._id(vm),
            start << 12,
            (end - start) << 12,
            private=private,
        )
        return {"spte_changes": result.spte_changes}

    def set_mmio_value(self, vm: str, value: int, zap: bool) -> dict[str, Any]:
        result = self._call(self.client.set_mmio_value, self._id(vm), value, zap_existing=zap)
        return {"spte_changes": result.spte_changes}

    def fault(self, vm: str, gpa: int, error_code: int) -> dict[str, Any]:
        res = self._call(self.client.fault, self._id(vm), gpa, error_code)
        return {
            "outcome": outcome_name(res.outcome),
            "gfn": res.gfn,
            "level": res.level,
            "spte": res.spte,
            "mmio_check": outcome_name(res.mmio_check),
        }

    def zap(self, vm: str, *, start: int, end: int, all_: bool, slot: int | None) -> dict[str, Any]:
        if all_:
            result = self._call(self.client.zap_sptes, self._id(vm), zap_all=True)
        elif slot is not None:
            result = self._call(self.client.zap_sptes, self._id(vm), slot=slot)
        else:
            result = self._call(self.client.zap_sptes, self._id(vm), start_gfn=start, end_gfn=end)
        return {"spte_changes": result.spte_changes}

    def age(self, vm: str, start: int, end: int, test: bool) -> dict[str, Any]:
        result = self._call(self.client.age_sptes, self._id(vm), start, end, test_only=test)
        return {"young": result.young, "spte_changes": result.spte_changes}

    def dump(self, vm: str, start: int, end: int | None) -> list[Row]:
        rows: list[Row] = []
        try:
            with self.client.stream_sptes(
                self._id(vm), start_gfn=start or None, end_gfn=end
            ) as stream:
                for chunk in stream:
                    rows.extend((r.root.label, r.gfn, r.level, r.value) for r in chunk.rows())
        except KvmmuError as exc:
            raise StepFailed(exc.message) from None
        return rows

    def stats(self, vm: str) -> dict[str, int]:
        stats = self._call(self.client.get_vm_stats, self._id(vm))
        return {name: int(getattr(stats, name)) for name in STAT_NAMES}

    def close(self) -> None:
        for vm_id in self.ids.values():
            with contextlib.suppress(KvmmuError):  # best effort: the run is over
                self.client.delete_vm(vm_id)
        self.ids.clear()


def _slot_fields(slot: Memslot) -> dict[str, Any]:
    return {name: getattr(slot, name) for name in Memslot.__slots__}
