"""How scenario results are printed: addresses and SPTEs in hex, counts in decimal.

The key a value is stored under decides: SPTEs, GFNs, PFNs, GPAs, error
codes and the bit fields of a decoded SPTE are hex (as `kvmmu decode`
prints them); counts, levels, generations and page offsets are decimal.
"""

from __future__ import annotations

from typing import Any, Final

HEX_KEYS: Final = frozenset(
    {"spte", "gfn", "pfn", "gpa", "size", "value", "error_code", "host_pfn", "gmem_pfn", "fields"}
)
# Tables whose every value is hex, whatever its name (PFN, GFN, memory type, ...).
HEX_TABLES: Final = frozenset({"fields"})
# Left out of a step's one-line summary: shown elsewhere, or too long.
NOT_BRIEF: Final = frozenset({"fields", "sptes", "gpa", "error_code", "created"})


def _child(key: str, name: str) -> str:
    return key if key in HEX_TABLES else name


def show(key: str, value: Any) -> str:
    """`value` (stored under `key`) as text; strings quoted, as in an expectation."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return f"{value:#x}" if key in HEX_KEYS else str(value)
    if isinstance(value, dict):
        items = (f"{name!r}: {show(_child(key, name), v)}" for name, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(key, v) for v in value) + "]"
    return repr(value)


def brief(values: dict[str, Any]) -> str:
    """One line of a step's result: key=value for what matters."""
    shown = []
    for key, value in values.items():
        if key in NOT_BRIEF:
            continue
        shown.append(f"{key}={value}" if isinstance(value, str) else f"{key}={show(key, value)}")
    return " ".join(shown)


def jsonable(key: str, value: Any) -> Any:
    """`value` for --json: hex strings where the text shows hex, plain ints elsewhere."""
    if isinstance(value, dict):
        return {name: jsonable(_child(key, name), v) for name, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(key, v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and key in HEX_KEYS:
        return f"{value:#x}"
    return value
