"""The scenario file format (TOML) and its validation.

A scenario names a host profile, declares VMs and lists steps; a step is
one operation on one VM with optional expectations. See
scenarios/README.md for the full reference. Every value is parsed and
checked here (`client.scenario.values`), so a file that fails validation
runs nothing; errors name the file, the step and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from client.scenario.show import show
from client.scenario.values import (
    EXPECTATIONS,
    PARAMS,
    ScenarioError,
    flag,
    number,
)
from mmu.errors import ModelError
from mmu.host import HostConfig
from mmu.profiles import host_config

__all__ = ["Scenario", "ScenarioError", "Step", "VmSpec", "load", "number", "parse"]

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
_vm_type = PARAMS["type"]


@dataclass(frozen=True, slots=True)
class VmSpec:
    id: str
    type: str = "default"
    guest_maxphyaddr: int | None = None
    tracing: bool = False


@dataclass(frozen=True, slots=True)
class Step:
    """One operation: `params` as written (for labels), `args` and `expect` parsed."""

    index: int
    op: str
    vm: str
    params: dict[str, Any]
    expect: dict[str, Any]
    note: str = ""
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        detail = " ".join(
            f"{k}={v}" if isinstance(v, str) else f"{k}={show(k, v)}"
            for k, v in self.params.items()
        )
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
        """The same steps on VMs of another type (for `scenario diff`).

        Raises ScenarioError (where "vm_type") for a type that does not exist.
        """
        kind = _vm_type(vm_type, "vm_type")
        vms = tuple(VmSpec(v.id, kind, v.guest_maxphyaddr, v.tracing) for v in self.vms)
        return replace(self, vms=vms)


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
    gma = raw.get("guest_maxphyaddr")
    return VmSpec(
        vm_id,
        _vm_type(raw.get("type", "default"), f"{where}.type"),
        None if gma is None else number(gma, f"{where}.guest_maxphyaddr"),
        flag(raw.get("tracing", False), f"{where}.tracing"),
    )


def _args(op: str, params: dict[str, Any], where: str) -> dict[str, Any]:
    """The parameters parsed; ScenarioError names the first bad one."""
    required, optional = OPS[op]
    missing = required - set(params)
    if missing:
        raise ScenarioError(where, f"{op} needs {sorted(missing)}")
    unknown = set(params) - required - optional
    if unknown:
        raise ScenarioError(where, f"{op} does not take {sorted(unknown)}")
    args = {k: PARAMS[k](v, f"{where}.{k}") for k, v in params.items()}
    if op == "zap":
        given = [k for k in ("gpa", "all", "slot") if k in args]
        if len(given) != 1 or args.get("all") is False:
            raise ScenarioError(where, "zap takes exactly one of gpa+size, all = true, slot")
    if op in ("zap", "dump") and ("gpa" in args) != ("size" in args):
        raise ScenarioError(where, f"{op} takes gpa and size together")
    return args


def _expect(op: str, raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ScenarioError(where, "must be a table")
    bad = set(raw) - EXPECT_KEYS[op] - {"error"}
    if bad:
        raise ScenarioError(
            where, f"{op} cannot check {sorted(bad)} (it can check {sorted(EXPECT_KEYS[op])})"
        )
    return {k: EXPECTATIONS[k](v, f"{where}.{k}") for k, v in raw.items()}


def _step(raw: Any, i: int, vm_ids: set[str], default_vm: str | None) -> Step:
    where = f"steps[{i}]"
    if not isinstance(raw, dict):
        raise ScenarioError(where, "must be a table")
    op = raw.get("op")
    if op not in OPS:
        raise ScenarioError(f"{where}.op", f"must be one of {', '.join(OPS)}, got {op!r}")
    vm = raw.get("vm", default_vm)
    if op == "create_vm":
        if not isinstance(vm, str) or not vm or vm in vm_ids:
            raise ScenarioError(f"{where}.vm", "create_vm needs a new VM id in `vm`")
        vm_ids.add(vm)
    elif vm not in vm_ids:
        raise ScenarioError(f"{where}.vm", f"names no declared VM (have {sorted(vm_ids)})")
    params = {k: v for k, v in raw.items() if k not in ("op", "vm", "expect", "note")}
    args = _args(op, params, where)
    expect = _expect(op, raw.get("expect", {}), f"{where}.expect")
    return Step(i, op, str(vm), params, expect, str(raw.get("note", "")), args)


def _host(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    host = data.get("host", {})
    if not isinstance(host, dict):
        raise ScenarioError("host", "must be a table")
    unknown = set(host) - {"profile", "set"}
    if unknown:
        raise ScenarioError("host", f"unknown keys {sorted(unknown)} (it takes profile and set)")
    profile = host.get("profile", "intel-ept")
    host_set = host.get("set", {})
    if not isinstance(host_set, dict):
        raise ScenarioError("host.set", "must be a table of host fields")
    if not isinstance(profile, str):
        raise ScenarioError("host.profile", f"expected a profile name, got {profile!r}")
    defaults = HostConfig()
    for name, value in host_set.items():
        want = type(getattr(defaults, name, value))
        if type(value) is not want:  # bool is an int: compare types exactly
            kind = {bool: "true or false", int: "an integer", str: "a string"}.get(want, "")
            raise ScenarioError(f"host.set.{name}", f"expected {kind}, got {value!r}")
    try:
        host_config(profile, **host_set)
    except (ModelError, TypeError, ValueError) as exc:
        name = getattr(exc, "field", None)
        where = f"host.set.{name}" if name in host_set else "host"
        raise ScenarioError(where, str(exc)) from None
    return profile, dict(host_set)


def parse(text: str, source: str = "<string>") -> Scenario:
    """The scenario in `text`; ScenarioError (naming `source`) if anything is malformed."""
    try:
        return _parse(text, source)
    except ScenarioError as exc:
        exc.source = source
        raise


def _parse(text: str, source: str) -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError("", f"not valid TOML: {exc}") from None
    unknown = set(data) - {"name", "description", "host", "vms", "steps"}
    if unknown:
        raise ScenarioError("", f"unknown top-level keys {sorted(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ScenarioError("name", "a scenario needs a name")
    profile, host_set = _host(data)
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
    description = str(data.get("description", ""))
    return Scenario(name, description, profile, host_set, vms, steps, source)


def load(path: Path) -> Scenario:
    """The scenario in the file at `path`; ScenarioError naming it if it cannot be one."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            "", f"not a scenario: not UTF-8 text (byte {exc.start})", str(path)
        ) from None
    except OSError as exc:
        raise ScenarioError("", f"cannot read: {exc.strerror or exc}", str(path)) from None
    return parse(text, str(path))
