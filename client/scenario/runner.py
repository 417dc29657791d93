"""Running a scenario on a backend: each step's result, checked against its expectations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from client.scenario.backend import Backend, StepFailed
from client.scenario.format import Scenario, Step, VmSpec
from client.scenario.show import show
from client.scenario.values import BACKING
from mmu.access import vendor_fault
from mmu.constants import KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY
from mmu.decode import decode_spte
from mmu.memslots import Memslot
from mmu.vmtypes import VmType, VmView


@dataclass(slots=True)
class StepResult:
    step: Step
    values: dict[str, Any]
    failures: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RunResult:
    scenario: Scenario
    setup_error: str | None = None
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.setup_error is None and not any(s.failures for s in self.steps)

    def comparable(self) -> list[tuple[int, str, dict[str, Any]]]:
        """What must match between two runs (error messages differ by backend)."""
        out = []
        for s in self.steps:
            values = {k: v for k, v in s.values.items() if k != "message"}
            out.append((s.step.index, s.step.op, values))
        return out


def _gfn_range(step: Step) -> tuple[int, int]:
    gpa, size = step.args["gpa"], step.args["size"]
    return gpa >> 12, (gpa + size + 0xFFF) >> 12


def _memslot(step: Step) -> Memslot:
    a = step.args
    base_gfn, npages = a["gpa"] >> 12, a["size"] >> 12
    flags = (
        (KVM_MEM_READONLY if a.get("readonly") else 0)
        | (KVM_MEM_LOG_DIRTY_PAGES if a.get("dirty_log") else 0)
        | (KVM_MEM_GUEST_MEMFD if a.get("guest_memfd") else 0)
    )
    gmem = a.get("gmem_pfn")
    if gmem is None and a.get("guest_memfd"):
        gmem = 0x2000000 + base_gfn
    return Memslot(
        id=a["slot"],
        base_gfn=base_gfn,
        npages=npages,
        flags=flags,
        userspace_addr=0x7F0000000000 + (base_gfn << 12),
        host_pfn_base=a.get("host_pfn", 0x1000000 + base_gfn),
        backing_level=BACKING[a.get("backing", "4K")],
        gmem_pfn_base=gmem,
    )


def _fault(backend: Backend, scenario: Scenario, step: Step) -> dict[str, Any]:
    a = step.args
    vm_type = vm_type_of(scenario, step.vm)
    gpa = a["gpa"]
    if "error_code" in a or a.get("raw"):
        code = a.get("error_code", 0)
    else:
        vf = vendor_fault(
            backend.host,
            vm_type,
            backend.guest_maxphyaddr(step.vm),
            gpa,
            access=a.get("access", "read"),
            present=a.get("present", False),
            private=a.get("private", False),
            rsvd=a.get("rsvd", False),
        )
        gpa, code = vf.gpa, vf.error_code
    values = backend.fault(step.vm, gpa, code)
    values["gpa"], values["error_code"] = gpa, code
    spte = values.get("spte")
    if spte is not None:
        view = VmView(
            host=backend.host, shadow_mmio_value=backend.mmio_value(step.vm), vm_type=vm_type
        )
        decoded = decode_spte(view, spte, values.get("level"))
        values["kind"] = decoded.kind.value
        values["mmio"] = decoded.is_mmio_for_vm
        values["pfn"] = decoded.pfn
        values["fields"] = {f.name: f.value for f in decoded.fields if f.name != "ignored"}
    return values


def _dump(backend: Backend, scenario: Scenario, step: Step) -> dict[str, Any]:
    start, end = (0, None) if "gpa" not in step.args else _gfn_range(step)
    rows = backend.dump(step.vm, start, end)
    vm_type = vm_type_of(scenario, step.vm)
    view = VmView(host=backend.host, shadow_mmio_value=backend.mmio_value(step.vm), vm_type=vm_type)
    sptes: list[dict[str, Any]] = []
    kinds: dict[str, int] = {}
    for root, gfn, level, value in rows:
        kind = decode_spte(view, value, level).kind.value
        sptes.append({"root": root, "gfn": gfn, "level": level, "value": value, "kind": kind})
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"count": len(sptes), "sptes": sptes, "kinds": kinds}


def _zap(backend: Backend, step: Step) -> dict[str, Any]:
    a = step.args
    if a.get("all"):
        return backend.zap(step.vm, start=0, end=0, all_=True, slot=None)
    if "slot" in a:
        return backend.zap(step.vm, start=0, end=0, all_=False, slot=a["slot"])
    start, end = _gfn_range(step)
    return backend.zap(step.vm, start=start, end=end, all_=False, slot=None)


def _create_vm(backend: Backend, scenario: Scenario, step: Step) -> dict[str, Any]:
    a = step.args
    backend.create_vm(
        VmSpec(step.vm, a["type"], a.get("guest_maxphyaddr"), a.get("tracing", False))
    )
    return {"created": True}


def vm_type_of(scenario: Scenario, vm: str) -> VmType:
    for spec in scenario.vms:
        if spec.id == vm:
            return VmType.parse(spec.type)
    for step in scenario.steps:
        if step.op == "create_vm" and step.vm == vm:
            return VmType.parse(step.args["type"])
    raise StepFailed(f"no VM {vm!r}")


OPERATIONS: dict[str, Callable[[Backend, Scenario, Step], dict[str, Any]]] = {
    "create_vm": _create_vm,
    "memslot": lambda b, s, st: b.set_memslot(st.vm, _memslot(st)),
    "delete_memslot": lambda b, s, st: b.delete_memslot(st.vm, st.args["slot"]),
    "move_memslot": lambda b, s, st: b.move_memslot(st.vm, st.args["slot"], st.args["gpa"] >> 12),
    "dirty_logging": lambda b, s, st: b.dirty_logging(st.vm, st.args["slot"], st.args["enable"]),
    "get_dirty_log": lambda b, s, st: b.get_dirty_log(st.vm, st.args["slot"]),
    "attributes": lambda b, s, st: b.attributes(st.vm, *_gfn_range(st), st.args["private"]),
    "set_mmio_value": lambda b, s, st: b.set_mmio_value(
        st.vm, st.args["value"], st.args.get("zap", False)
    ),
    "fault": _fault,
    "zap": lambda b, s, st: _zap(b, st),
    "age": lambda b, s, st: b.age(st.vm, *_gfn_range(st), st.args.get("test", False)),
    "dump": _dump,
    "stats": lambda b, s, st: {"stats": b.stats(st.vm)},
}


def _matches(want: Any, got: Any) -> bool:
    """`got` has what `want` says; tables need only the keys `want` names."""
    if isinstance(want, dict) and isinstance(got, dict):
        return all(k in got and _matches(v, got[k]) for k, v in want.items())
    if isinstance(want, list) and isinstance(got, list):
        return len(want) == len(got) and all(_matches(w, g) for w, g in zip(want, got, strict=True))
    return bool(want == got) and isinstance(want, bool) == isinstance(got, bool)


def _relevant(want: Any, got: Any) -> Any:
    """What to print of `got`: for a table, only the keys `want` names."""
    if isinstance(want, dict) and isinstance(got, dict):
        return {k: got[k] for k in want if k in got}
    return got


def check(step: Step, values: dict[str, Any]) -> list[str]:
    """One line per expectation of `step` that `values` does not meet."""
    failures = []
    for key, want in step.expect.items():
        got = values.get(key)
        if key == "error":
            if want != ("message" in values):
                failures.append(
                    f"expected {'an error' if want else 'success'}, got "
                    f"{values.get('message', 'success')}"
                )
            continue
        if key == "sptes" and isinstance(got, list):
            missing = [w for w in want if not any(_matches(w, g) for g in got)]
            if missing:
                failures.append(f"expected SPTE(s) {show(key, missing)} in the dump")
            continue
        if not _matches(want, got):
            failures.append(
                f"expected {key} {show(key, want)}, got {show(key, _relevant(want, got))}"
            )
    return failures


def run(scenario: Scenario, backend: Backend) -> RunResult:
    result = RunResult(scenario)
    try:
        for spec in scenario.vms:
            backend.create_vm(spec)
    except StepFailed as exc:
        result.setup_error = exc.message
        return result
    for step in scenario.steps:
        try:
            values = OPERATIONS[step.op](backend, scenario, step)
        except StepFailed as exc:
            values = {"message": str(exc)}
        failures = check(step, values)
        if "message" in values and "error" not in step.expect:
            failures.insert(0, f"refused: {values['message']}")
        result.steps.append(StepResult(step, values, failures))
    return result
