"""The scenario file format (TOML) and its validation.

A scenario names a host profile, declares VMs and lists steps; a step is
one operation on one VM with optional expectations. See
scenarios/README.md for the full reference. Errors name the step and the
field, and a file that fails validation runs nothing.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from client.commands.params import parse_number

OPS: Final[dict[str, tuple[set[str], set[str]]]] = {
    # op: (required params, optional params) -- besides "op", "vm", "expect", "note"
    "create_vm": ({"type"}, {"guest_maxphyaddr", "tracing"}),
    "memslot": (
        {"slot", "gpa", "size"},
        {"readonly", "dirty_log", "guest_memfd", "backing", "host_pfn", "gmem_pfn"},
    ),
    "delete_memslot": ({"slot"}, set()),
    "move_memslot": ({"slot", "gpa"}, set()),
    "dirty_logging": ({"slot", "enable"}, set()),
    "get_dirty_log": ({"slot"}, set()),
    "attributes": ({"gpa", "size", "private"}, set()),
    "set_mmio_value": ({"value"}, {"zap"}),
    "fault": ({"gpa"}, {"access", "present", "private", "rsvd", "error_code", "raw"}),
    "zap": (set(), {"gpa", "size", "all", "slot"}),
    "age": ({"gpa", "size"}, {"test"}),
    "dump": (set(), {"gpa", "size"}),
    "stats": (set(), set()),
}
EXPECT_KEYS: Final[dict[str, set[str]]] = {
    "create_vm": {"error"},
    "fault": {"outcome", "level", "spte", "gfn", "kind", "mmio", "pfn", "fields", "mmio_check"},
    "memslot": {"result", "generation", "zap", "spte_changes"},
    "delete_memslot": {"result", "generation", "zap", "spte_changes"},
    "move_memslot": {"result", "generation", "zap", "spte_changes"},
    "dirty_logging": {"result", "generation", "spte_changes"},
    "get_dirty_log": {"dirty", "spte_changes"},
    "attributes": {"spte_changes"},
    "set_mmio_value": {"spte_changes", "error"},
    "zap": {"spte_changes"},
    "age": {"young", "spte_changes"},
    "dump": {"count", "sptes", "kinds"},
    "stats": {"stats"},
}
VM_TYPES: Final = ("default", "sw-protected", "sev", "sev-es", "snp", "tdx")
ACCESSES: Final = ("read", "write", "exec")


class ScenarioError(ValueError):
    """A malformed scenario: `where` says which step or field."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


def number(value: Any, where: str) -> int:
    """An int from an int or a string: decimal, 0x hex, or a size like 4K / 2M / 1G."""
    if isinstance(value, bool):
        raise ScenarioError(where, f"expected a number, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ScenarioError(where, "must not be negative")
        return value
    if isinstance(value, str):
        try:
            return parse_number(value, sizes=True)
        except ValueError:
            pass
    raise ScenarioError(where, f"expected a number (decimal, 0x hex or 4K/2M/1G), got {value!r}")


@dataclass(frozen=True, slots=True)
class VmSpec:
    id: str
    type: str = "default"
    guest_maxphyaddr: int | None = None
    tracing: bool = False


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    op: str
    vm: str
    params: dict[str, Any]
    expect: dict[str, Any]
    note: str = ""

    @property
    def label(self) -> str:
        detail = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"step {self.index} ({self.op} {self.vm}{' ' + detail if detail else ''})"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    profile: str
    host_set: dict[str, Any]
    vms: tuple[VmSpec, ...]
    steps: tuple[Step, ...]
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def with_vm_type(self, vm_type: str) -> Scenario:
        """The same steps on VMs of another type (for `scenario diff`)."""
        vms = tuple(VmSpec(v.id, vm_type, v.guest_maxphyaddr, v.tracing) for v in self.vms)
        return Scenario(
            self.name, self.description, self.profile, self.host_set, vms, self.steps, self.source
        )


def _vm(raw: Any, i: int) -> VmSpec:
    where = f"vms[{i}]"
    if not isinstance(raw, dict):
        raise ScenarioError(where, "must be a table")
    unknown = set(raw) - {"id", "type", "guest_maxphyaddr", "tracing"}
    if unknown:
        raise ScenarioError(where, f"unknown keys {sorted(unknown)}")
    vm_id = raw.get("id")
    if not isinstance(vm_id, str) or not vm_id:
        raise ScenarioError(f"{where}.id", "a non-empty string is required")
    vm_type = str(raw.get("type", "default")).lower().replace("_", "-")
    if vm_type not in VM_TYPES:
        raise ScenarioError(f"{where}.type", f"must be one of {', '.join(VM_TYPES)}")
    gma = raw.get("guest_maxphyaddr")
    return VmSpec(
        vm_id,
        vm_type,
        None if gma is None else number(gma, f"{where}.guest_maxphyaddr"),
        bool(raw.get("tracing", False)),
    )


def _step(raw: Any, i: int, vm_ids: set[str], default_vm: str | None) -> Step:
    where = f"steps[{i}]"
    if not isinstance(raw, dict):
        raise ScenarioError(where, "must be a table")
    op = raw.get("op")
    if op not in OPS:
        raise ScenarioError(f"{where}.op", f"must be one of {', '.join(OPS)}")
    vm = raw.get("vm", default_vm)
    if op == "create_vm":
        if not isinstance(vm, str) or not vm or vm in vm_ids:
            raise ScenarioError(f"{where}.vm", "create_vm needs a new VM id in `vm`")
        vm_ids.add(vm)
    elif vm not in vm_ids:
        raise ScenarioError(f"{where}.vm", f"names no declared VM (have {sorted(vm_ids)})")
    required, optional = OPS[op]
    params = {k: v for k, v in raw.items() if k not in ("op", "vm", "expect", "note")}
    missing = required - set(params)
    if missing:
        raise ScenarioError(where, f"{op} needs {sorted(missing)}")
    unknown = set(params) - required - optional
    if unknown:
        raise ScenarioError(where, f"{op} does not take {sorted(unknown)}")
    if op == "create_vm" and str(params["type"]).lower().replace("_", "-") not in VM_TYPES:
        raise ScenarioError(f"{where}.type", f"must be one of {', '.join(VM_TYPES)}")
    if op == "fault" and params.get("access", "read") not in ACCESSES:
        raise ScenarioError(f"{where}.access", f"must be one of {', '.join(ACCESSES)}")
    if op == "zap" and sum(k in params for k in ("gpa", "all", "slot")) != 1:
        raise ScenarioError(where, "zap takes exactly one of gpa+size, all, slot")
    expect = raw.get("expect", {})
    if not isinstance(expect, dict):
        raise ScenarioError(f"{where}.expect", "must be a table")
    bad = set(expect) - EXPECT_KEYS[op] - {"error"}
    if bad:
        raise ScenarioError(f"{where}.expect", f"{op} cannot check {sorted(bad)}")
    return Step(i, op, str(vm), params, expect, str(raw.get("note", "")))


def parse(text: str, source: str = "<string>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, f"not valid TOML: {exc}") from None
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ScenarioError("name", "a scenario needs a name")
    host = data.get("host", {})
    if not isinstance(host, dict):
        raise ScenarioError("host", "must be a table")
    profile = str(host.get("profile", "intel-ept"))
    host_set = host.get("set", {})
    if not isinstance(host_set, dict):
        raise ScenarioError("host.set", "must be a table of host fields")
    raw_vms = data.get("vms", [])
    if not isinstance(raw_vms, list) or not raw_vms:
        raise ScenarioError("vms", "declare at least one VM ([[vms]])")
    vms = tuple(_vm(v, i) for i, v in enumerate(raw_vms))
    ids = [v.id for v in vms]
    if len(set(ids)) != len(ids):
        raise ScenarioError("vms", "VM ids must be unique")
    default_vm = ids[0] if len(ids) == 1 else None
    raw_steps = data.get("steps", [])
    if not isinstance(raw_steps, list):
        raise ScenarioError("steps", "must be an array of tables ([[steps]])")
    known = set(ids)
    steps = tuple(_step(s, i, known, default_vm) for i, s in enumerate(raw_steps))
    unknown = set(data) - {"name", "description", "host", "vms", "steps"}
    if unknown:
        raise ScenarioError(source, f"unknown top-level keys {sorted(unknown)}")
    return Scenario(
        name, str(data.get("description", "")), profile, dict(host_set), vms, steps, source
    )


def load(path: Path) -> Scenario:
    return parse(path.read_text(), str(path))
