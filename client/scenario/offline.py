"""The in-process backend: the same `mmu` model the server runs."""

from __future__ import annotations

from typing import Any

from client.scenario.backend import Row, StepFailed
from client.scenario.format import Scenario, VmSpec
from mmu.errors import ModelError
from mmu.memslot_ops import MemslotResult
from mmu.memslots import Memslot
from mmu.profiles import host_from_profile
from mmu.vm import Vm
from mmu.vmtypes import VmType


def memslot_result(result: MemslotResult) -> dict[str, Any]:
    return {
        "result": result.result,
        "generation": result.generation,
        "zap": result.zap,
        "spte_changes": result.spte_changes,
    }


class OfflineBackend:
    def __init__(self, scenario: Scenario) -> None:
        try:
            self.host = host_from_profile(scenario.profile, **scenario.host_set)
        except ModelError as exc:
            raise StepFailed(f"host: {exc}") from None
        self.vms: dict[str, Vm] = {}

    def _vm(self, vm: str) -> Vm:
        return self.vms[vm]

    def create_vm(self, spec: VmSpec) -> None:
        try:
            self.vms[spec.id] = Vm(
                self.host,
                VmType.parse(spec.type),
                vm_id=spec.id,
                guest_maxphyaddr=spec.guest_maxphyaddr,
                tracing=spec.tracing,
            )
        except ModelError as exc:
            raise StepFailed(str(exc)) from None

    def mmio_value(self, vm: str) -> int:
        return self._vm(vm).shadow_mmio_value

    def guest_maxphyaddr(self, vm: str) -> int:
        return self._vm(vm).state.guest_maxphyaddr

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModelError as exc:
            raise StepFailed(str(exc)) from None

    def set_memslot(self, vm: str, slot: Memslot) -> dict[str, Any]:
        return memslot_result(self._call(self._vm(vm).create_memslot, slot))

    def delete_memslot(self, vm: str, slot: int) -> dict[str, Any]:
        return memslot_result(self._call(self._vm(vm).delete_memslot, slot))

    def move_memslot(self, vm: str, slot: int, base_gfn: int) -> dict[str, Any]:
        return memslot_result(self._call(self._vm(vm).move_memslot, slot, base_gfn))

    def dirty_logging(self, vm: str, slot: int, enable: bool) -> dict[str, Any]:
        return memslot_result(self._call(self._vm(vm).set_dirty_logging, slot, enable))

    def get_dirty_log(self, vm: str, slot: int) -> dict[str, Any]:
        log = self._call(self._vm(vm).get_dirty_log, slot)
        return {"dirty": list(log.dirty), "spte_changes": log.spte_changes}

    def attributes(self, vm: str, start: int, end: int, private: bool) -> dict[str, Any]:
        result = self._call(self._vm(vm).set_memory_attributes, start, end, private)
        return {"spte_changes": result.spte_changes}

    def set_mmio_value(self, vm: str, value: int, zap: bool) -> dict[str, Any]:
        existing = "zap" if zap else "refuse"
        result = self._call(self._vm(vm).set_mmio_value, value, existing=existing)
        return {"spte_changes": result.spte_changes}

    def fault(self, vm: str, gpa: int, error_code: int) -> dict[str, Any]:
        res = self._call(self._vm(vm).fault, gpa, error_code, events=False)
        return {
            "outcome": res.outcome.value,
            "gfn": res.gfn,
            "level": res.level,
            "spte": res.spte,
            "mmio_check": res.mmio_check.value if res.mmio_check else None,
        }

    def zap(self, vm: str, *, start: int, end: int, all_: bool, slot: int | None) -> dict[str, Any]:
        target = self._vm(vm)
        if all_:
            result = self._call(target.zap_all_fast)
        elif slot is not None:
            result = self._call(target.zap_memslot, slot)
        else:
            result = self._call(target.zap_gfn_range, start, end)
        return {"spte_changes": result.spte_changes}

    def age(self, vm: str, start: int, end: int, test: bool) -> dict[str, Any]:
        result = self._call(self._vm(vm).age, start, end, test_only=test)
        return {"young": result.young, "spte_changes": result.spte_changes}

    def dump(self, vm: str, start: int, end: int | None) -> list[Row]:
        return list(self._vm(vm).dump(start=start, end=end).rows())

    def stats(self, vm: str) -> dict[str, int]:
        return self._vm(vm).stats()

    def close(self) -> None:
        self.vms.clear()
