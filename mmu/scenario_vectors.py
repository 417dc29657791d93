"""Runs a `tdp_scenario` golden-vector case through the public `Vm` API.

Each op of the case becomes one `Vm` call; the result is reported in the
vectors' shape so `mmu.vectors.diff` can compare it field by field.
"""

from __future__ import annotations

from typing import Any

from mmu.dump import ROOT_NAMES, count_tables, fnv1a64
from mmu.errors import ModelError
from mmu.events import VECTOR_ARITY, Event
from mmu.fault import FaultResult
from mmu.memslot_ops import MemslotResult
from mmu.memslots import Memslot
from mmu.vectors import Case, hexint, host_from_case, vm_type_of
from mmu.vm import Vm
from mmu.vmtypes import VmView


def vector_event(event: Event) -> list[Any]:
    name = event[0]
    arity = VECTOR_ARITY.get(name, len(event) - 1)
    return [name, *event[1 : 1 + arity]]


def _fault(vm: Vm, op: dict[str, Any]) -> dict[str, Any]:
    res: FaultResult = vm.fault(hexint(op["gpa"]), hexint(op["error_code"]))
    mf = res.memory_fault
    return {
        "result": res.outcome.value,
        "gfn": res.gfn,
        "private": res.private,
        "mmio_check": res.mmio_check.value if res.mmio_check else None,
        "mmio_cache_hit": res.mmio_cache_hit,
        "fast": res.fast.value if res.fast else None,
        "root": res.root,
        "req_level": res.req_level,
        "goal_level": res.goal_level,
        "level": res.level,
        "spte": res.spte,
        "memory_fault": None if mf is None else {"gpa": mf.gpa, "size": mf.size, "flags": mf.flags},
        "dirty_marked": res.dirty_marked,
        "events": [vector_event(e) for e in res.events],
        "warnings": res.warnings,
    }


def _memslot(result: MemslotResult) -> dict[str, Any]:
    return {
        "result": result.result,
        "generation": result.generation,
        "mmio_gen_wrap": result.mmio_gen_wrap,
        "zap": result.zap,
        "spte_changes": result.spte_changes,
    }


def _refused(vm: Vm, exc: ModelError, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {"result": exc.errno or "EINVAL", "spte_changes": 0}
    if kind == "memslot":
        out |= {"generation": vm.generation, "mmio_gen_wrap": False, "zap": "none"}
    if kind == "dirty":
        out["dirty"] = []
    if kind == "attributes":
        out["result"] = exc.errno or "EINVAL"
    return out


def run_op(vm: Vm, op: dict[str, Any]) -> dict[str, Any]:
    name = op["op"]
    try:
        if name == "fault":
            return _fault(vm, op)
        if name == "set_memslot":
            gmem = op.get("gmem_pfn_base")
            slot = Memslot(
                id=int(op["slot"]),
                base_gfn=hexint(op["base_gfn"]),
                npages=int(op["npages"]),
                flags=int(op["flags"]),
                userspace_addr=hexint(op["userspace_addr"]),
                host_pfn_base=hexint(op["host_pfn_base"]),
                backing_level=int(op["backing_level"]),
                gmem_pfn_base=None if gmem is None else hexint(gmem),
            )
            return _memslot(vm.create_memslot(slot))
        if name == "delete_memslot":
            return _memslot(vm.delete_memslot(int(op["slot"])))
        if name == "move_memslot":
            return _memslot(vm.move_memslot(int(op["slot"]), hexint(op["new_base_gfn"])))
        if name in ("enable_dirty_log", "disable_dirty_log"):
            return _memslot(vm.set_dirty_logging(int(op["slot"]), name == "enable_dirty_log"))
        if name == "get_dirty_log":
            log = vm.get_dirty_log(int(op["slot"]))
            return {"result": "ok", "dirty": log.dirty, "spte_changes": log.spte_changes}
        if name == "zap_gfn_range":
            r = vm.zap_gfn_range(hexint(op["start_gfn"]), hexint(op["end_gfn"]))
            return {"result": "ok", "spte_changes": r.spte_changes, "warnings": list(r.warnings)}
        if name == "zap_all_fast":
            r = vm.zap_all_fast()
            return {"result": "ok", "spte_changes": r.spte_changes, "warnings": list(r.warnings)}
        if name in ("age_gfn_range", "test_age_gfn_range"):
            a = vm.age(
                hexint(op["start_gfn"]), hexint(op["end_gfn"]), test_only=name.startswith("test")
            )
            return {"result": "ok", "young": a.young, "spte_changes": a.spte_changes}
        if name == "set_memory_attributes":
            attrs = vm.set_memory_attributes(
                hexint(op["start_gfn"]), hexint(op["end_gfn"]), bool(op["private"])
            )
            return {"result": attrs.result, "spte_changes": attrs.spte_changes}
        if name == "set_mmio_value":
            r = vm.set_mmio_value(hexint(op["value"]), existing="keep", validate=False)
            return {"result": "ok", "spte_changes": r.spte_changes}
    except ModelError as exc:
        kind = {
            "get_dirty_log": "dirty",
            "set_memory_attributes": "attributes",
        }.get(name, "memslot" if "memslot" in name or "dirty_log" in name else "other")
        return _refused(vm, exc, kind)
    raise ValueError(f"unknown op {name!r}")


def final_state(vm: Vm) -> dict[str, Any]:
    dump = vm.dump()
    rows = list(dump.rows())
    text = "".join(
        f"{root},0x{gfn:016x},{level},0x{value:016x}\n" for root, gfn, level, value in rows
    )
    return {
        "generation": vm.generation,
        "stats": vm.stats(),
        "tables": count_tables(vm.state),
        "sptes_count": len(rows),
        "sptes": [list(r) for r in rows] if len(rows) <= 1500 else None,
        "sptes_fnv1a64": fnv1a64(text.encode()),
    }


def build_vm(case: Case) -> Vm:
    options = case.inputs.get("options", {})
    host = host_from_case(
        case.config,
        pml=bool(options.get("pml", False)),
        eager_page_split=bool(options.get("eager_page_split", True)),
    )
    return Vm(
        host,
        vm_type_of(case.config),
        guest_maxphyaddr=int(case.config["guest_maxphyaddr"]),
        mt_bits=hexint(options.get("mt_bits", "0x0")) if host.has_get_mt_mask else None,
        slot_zap_all_quirk=bool(options.get("slot_zap_all_quirk", True)),
        initial_generation=hexint(options.get("initial_generation", "0x0")),
    )


def run_tdp_scenario(case: Case) -> dict[str, Any]:
    vm = build_vm(case)
    results = []
    for op in case.inputs["ops"]:
        before = vm.stats()
        got = run_op(vm, op)
        after = vm.stats()
        got["stats_delta"] = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        got.setdefault("warnings", [])
        results.append(got)
    return {"results": _align_stats_delta(case, results), "final": final_state(vm)}


def _align_stats_delta(case: Case, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Missing keys in an expected stats_delta mean 0: compare the full maps."""
    expected = case.expected.get("results", [])
    for want, got in zip(expected, results, strict=False):
        if isinstance(want, dict) and "stats_delta" in want:
            for key in got["stats_delta"]:
                want["stats_delta"].setdefault(key, 0)
    return results


def vm_view(vm: Vm) -> VmView:
    return VmView(host=vm.host, shadow_mmio_value=vm.shadow_mmio_value, vm_type=vm.vm_type)


__all__ = ["ROOT_NAMES", "run_tdp_scenario"]
