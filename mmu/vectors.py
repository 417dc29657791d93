"""Loading vector files (format of shared/vectors/README.md) and comparing results.

Hex strings ("0x...") compare as integers; `null` as None; lists and dicts
element by element. Missing keys in a `stats_delta` mean 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmu.host import Host, HostConfig, derive_host
from mmu.vmtypes import VmType

HOST_FIELDS = HostConfig.field_names()


@dataclass(frozen=True, slots=True)
class Case:
    source: str
    id: str
    fn: str
    config: dict[str, Any]
    inputs: dict[str, Any]
    expected: dict[str, Any]


def load_cases(path: Path) -> Iterator[Case]:
    data = json.loads(path.read_text())
    for raw in data["cases"]:
        yield Case(
            source=path.name,
            id=str(raw["id"]),
            fn=str(raw["fn"]),
            config=raw["config"],
            inputs=raw.get("inputs", {}),
            expected=raw.get("expected", {}),
        )


def hexint(value: Any) -> int:
    if isinstance(value, str):
        return int(value, 16)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a hex string or int, got {value!r}")
    return value


def host_config_from_case(config: dict[str, Any], **overrides: Any) -> HostConfig:
    """Build the host inputs from a case config (unknown keys are not host inputs)."""
    values: dict[str, Any] = {}
    for name in HOST_FIELDS:
        if name in config:
            value = config[name]
            values[name] = hexint(value) if name == "host_sme_mask" else value
    # The vectors' TDP MMU is always on where TDP is.
    values.setdefault("tdp_mmu", config.get("mmu") != "shadow")
    # The vectors model KVM's module gate only; they assume TDX hardware is
    # present wherever an Intel host could run it.
    values.setdefault("tdx_module", config.get("cpu_vendor") == "intel")
    values.update(overrides)
    return HostConfig(**values)


def host_from_case(config: dict[str, Any], **overrides: Any) -> Host:
    return derive_host(host_config_from_case(config, **overrides))


def vm_type_of(config: dict[str, Any]) -> VmType:
    return VmType(int(config.get("vm_type", 0)))


def _normalise(expected: Any, got: Any) -> tuple[Any, Any]:
    if isinstance(expected, str) and expected.startswith("0x") and isinstance(got, int):
        return int(expected, 16), got
    return expected, got


def diff(expected: Any, got: Any, path: str = "") -> list[str]:
    """Human-readable differences; empty when they match."""
    if isinstance(expected, dict) and isinstance(got, dict):
        out: list[str] = []
        for key, value in expected.items():
            if key not in got:
                out.append(f"{path}{key}: missing (expected {value!r})")
                continue
            out.extend(diff(value, got[key], f"{path}{key}."))
        return out
    if isinstance(expected, list) and isinstance(got, (list, tuple)):
        if len(expected) != len(got):
            return [
                f"{path.rstrip('.')}: expected {len(expected)} items, got {len(got)}: "
                f"expected {expected!r}, got {list(got)!r}"
            ]
        out = []
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            out.extend(diff(e, g, f"{path}{i}."))
        return out
    e, g = _normalise(expected, got)
    strict = type(e) is bool or type(g) is bool  # True must not equal 1
    if (type(e) is type(g) or not strict) and e == g:
        return []
    as_hex = isinstance(expected, str) and expected.startswith("0x")
    shown_e = f"{e:#x}" if as_hex else repr(e)
    shown_g = f"{g:#x}" if as_hex and isinstance(g, int) else repr(g)
    return [f"{path.rstrip('.')}: expected {shown_e}, got {shown_g}"]
