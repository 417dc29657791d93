"""The typed values of a scenario file: numbers, flags, names, expectations.

Every value is parsed when the file loads, so a typo is reported with the
step and key that hold it before any operation runs, never as a failed
step halfway through a run. A parser takes the raw TOML value and `where`
(e.g. ``steps[3].gpa``) and returns the typed value or raises ScenarioError.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Final

from client.commands.params import U64_MAX, parse_number
from mmu.decode import SpteKind
from mmu.fault import Outcome
from mmu.state import STAT_NAMES
from mmu.vmtypes import VmType

Parser = Callable[[Any, str], Any]

BACKING: Final = {"4K": 1, "2M": 2, "1G": 3}
VM_TYPES: Final = tuple(t.cli_name for t in VmType)
ACCESSES: Final = ("read", "write", "exec")
# What kvm_mmu_page_fault returns, in the model's (KVM's) names.
OUTCOMES: Final = tuple(o.value for o in Outcome)
MEMSLOT_RESULTS: Final = ("ok", "noop", "EINVAL")
MEMSLOT_ZAPS: Final = ("none", "fast_zap_all", "slot_range")
SPTE_KINDS: Final = tuple(k.value for k in SpteKind)
ROOTS: Final = ("direct", "mirror")
LEVELS: Final = range(1, 6)  # PG_LEVEL_4K .. PG_LEVEL_256T


class ScenarioError(ValueError):
    """A malformed scenario: `where` says which step and key ("" for the whole file).

    `source` (the file) is filled in by `format.parse`; str() names all three.
    """

    def __init__(self, where: str, message: str, source: str = "") -> None:
        super().__init__(message)
        self.where = where
        self.message = message
        self.source = source

    def __str__(self) -> str:
        return ": ".join(part for part in (self.source, self.where, self.message) if part)


def number(value: Any, where: str) -> int:
    """An unsigned 64-bit int from an int or a string: decimal, 0x hex, or 4K / 2M / 1G."""
    if isinstance(value, str) and value.strip().startswith("-"):
        raise ScenarioError(where, f"must not be negative, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        parsed: int | None = value
    elif isinstance(value, str):
        try:
            parsed = parse_number(value, sizes=True)
        except ValueError:
            parsed = None
    else:
        parsed = None
    if parsed is None:
        raise ScenarioError(
            where, f"expected a number (decimal, 0x hex or 4K/2M/1G), got {value!r}"
        )
    if parsed < 0:
        raise ScenarioError(where, f"must not be negative, got {value!r}")
    if parsed > U64_MAX:
        raise ScenarioError(where, f"{value!r} does not fit in 64 bits")
    return parsed


def flag(value: Any, where: str) -> bool:
    """A TOML boolean; the string "false" is refused rather than read as true."""
    if not isinstance(value, bool):
        raise ScenarioError(where, f"expected true or false, got {value!r}")
    return value


def _key(text: str) -> str:
    return text.strip().lower().replace("-", "_")


def choice(options: Collection[str], what: str) -> Parser:
    """One of `options` (case, '-' and '_' ignored); returns the option as spelled here."""
    by_key = {_key(o): o for o in options}

    def parse(value: Any, where: str) -> str:
        if isinstance(value, str) and _key(value) in by_key:
            return by_key[_key(value)]
        raise ScenarioError(
            where, f"unknown {what} {value!r}: expected one of {', '.join(options)}"
        )

    return parse


def outcome(value: Any, where: str) -> str:
    """A fault outcome as the model names it: RET_PF_FIXED, EFAULT, ...

    The CLI's spelling (FIXED, -EFAULT) and the --json enum's
    (FAULT_OUTCOME_FIXED) are accepted too, in any case.
    """
    if isinstance(value, str):
        key = value.strip().upper().lstrip("-").removeprefix("FAULT_OUTCOME_")
        for name in (key, f"RET_PF_{key}"):
            if name in OUTCOMES:
                return name
    raise ScenarioError(
        where,
        f"unknown outcome {value!r}: expected one of {', '.join(OUTCOMES)} "
        "(FIXED and FAULT_OUTCOME_FIXED are accepted for RET_PF_FIXED, and so on)",
    )


def level(value: Any, where: str) -> int:
    parsed = number(value, where)
    if parsed not in LEVELS:
        raise ScenarioError(where, f"a level is 1 (4K) to 5, got {value!r}")
    return parsed


def table_of(item: Parser, keys: Collection[str] | None = None) -> Parser:
    """A TOML table whose values `item` parses; `keys` limits the names if given."""

    def parse(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ScenarioError(where, f"expected a table, got {value!r}")
        if keys is not None:
            unknown = sorted(set(value) - set(keys))
            if unknown:
                raise ScenarioError(
                    where, f"unknown names {unknown}; expected some of {', '.join(keys)}"
                )
        return {k: item(v, f"{where}.{k}") for k, v in value.items()}

    return parse


def list_of(item: Parser) -> Parser:
    def parse(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise ScenarioError(where, f"expected an array, got {value!r}")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

    return parse


def _field_value(value: Any, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    return number(value, where)


SPTE_ENTRY: Final[dict[str, Parser]] = {
    "root": choice(ROOTS, "root"),
    "gfn": number,
    "level": level,
    "value": number,
    "kind": choice(SPTE_KINDS, "SPTE kind"),
}


def _spte_entry(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(where, f"expected a table of {', '.join(SPTE_ENTRY)}, got {value!r}")
    unknown = sorted(set(value) - set(SPTE_ENTRY))
    if unknown:
        raise ScenarioError(
            where, f"unknown keys {unknown}; expected some of {', '.join(SPTE_ENTRY)}"
        )
    return {k: SPTE_ENTRY[k](v, f"{where}.{k}") for k, v in value.items()}


# Parameters mean the same in every operation that takes them.
PARAMS: Final[dict[str, Parser]] = {
    "type": choice(VM_TYPES, "VM type"),
    "guest_maxphyaddr": number,
    "tracing": flag,
    "slot": number,
    "gpa": number,
    "size": number,
    "readonly": flag,
    "dirty_log": flag,
    "guest_memfd": flag,
    "backing": choice(BACKING, "backing page size"),
    "host_pfn": number,
    "gmem_pfn": number,
    "enable": flag,
    "private": flag,
    "value": number,
    "zap": flag,
    "access": choice(ACCESSES, "access"),
    "present": flag,
    "rsvd": flag,
    "error_code": number,
    "raw": flag,
    "all": flag,
    "test": flag,
}

EXPECTATIONS: Final[dict[str, Parser]] = {
    "error": flag,
    "outcome": outcome,
    "mmio_check": outcome,
    "level": level,
    "spte": number,
    "gfn": number,
    "pfn": number,
    "kind": choice(SPTE_KINDS, "SPTE kind"),
    "mmio": flag,
    "fields": table_of(_field_value),  # names depend on the SPTE's layout: any name
    "result": choice(MEMSLOT_RESULTS, "memslot result"),
    "generation": number,
    "zap": choice(MEMSLOT_ZAPS, "zap"),
    "spte_changes": number,
    "dirty": list_of(number),
    "young": flag,
    "count": number,
    "sptes": list_of(_spte_entry),
    "kinds": table_of(number, SPTE_KINDS),
    "stats": table_of(number, STAT_NAMES),
}
