"""Formatting of client values for people: hex for addresses and masks, labels for enums."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any, Final

from rich.text import Text

from client.enums import FaultOutcome, ProtoEnum, SpteKind
from client.types import Memslot, Vm

HEX_NAMES: Final = frozenset(
    {
        "gfn_direct_bits",
        "mt_bits",
        "gpa",
        "spte",
        "pfn",
        "gfn",
        "cr2_or_gpa",
        "sptep",
        "memory_size",
        "error_code",
        "value",
        "reserved_bits",
        "bitmap",
        "access",
        "tdp_root_access",
        "flags",
        "size",
        "addr",
    }
)
HEX_SUFFIXES: Final = ("_mask", "_value", "_gfn", "_spte", "_addr", "_base", "_pfn")
LEVEL_NAMES: Final = {1: "4K", 2: "2M", 3: "1G", 4: "512G", 5: "256T"}
KIND_STYLES: Final = {
    SpteKind.LEAF: "green",
    SpteKind.MMIO: "magenta",
    SpteKind.NON_LEAF: "blue",
    SpteKind.NON_PRESENT: "dim",
    SpteKind.FROZEN: "red",
}
OUTCOME_STYLES: Final = {
    FaultOutcome.FIXED: "green",
    FaultOutcome.SPURIOUS: "cyan",
    FaultOutcome.EMULATE: "yellow",
    FaultOutcome.RETRY: "yellow",
    FaultOutcome.INVALID: "yellow",
}


def hx(value: int | None) -> str:
    """0x-prefixed hex, "-" for None."""
    return "-" if value is None else f"{value:#x}"


def wants_hex(name: str) -> bool:
    """Addresses, masks, SPTE values and GFNs are shown in hex."""
    return name in HEX_NAMES or name.endswith((*HEX_SUFFIXES, "_gpa"))


def show(name: str, value: Any) -> str:
    """A field value for people."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, ProtoEnum):
        return value.label
    if isinstance(value, int):
        return hx(value) if wants_hex(name) else str(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, tuple):
        return ", ".join(show(name, v) for v in value) or "-"
    return str(value)


def pairs(value: Any, skip: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Every field of a client dataclass as (name, shown value), except `proto` and `skip`."""
    return [
        (f.name, show(f.name, getattr(value, f.name)))
        for f in fields(value)
        if f.name != "proto" and f.name not in skip
    ]


def level_name(level: int | None) -> str:
    """ "1 (4K)" style."""
    if level is None:
        return "-"
    return f"{level} ({LEVEL_NAMES[level]})" if level in LEVEL_NAMES else str(level)


def kind_text(kind: SpteKind) -> Text:
    """An SPTE kind, coloured."""
    return Text(kind.label, style=KIND_STYLES.get(kind, ""))


def outcome_text(outcome: FaultOutcome) -> Text:
    """A fault outcome under KVM's name, coloured (errors red)."""
    return Text(outcome.name, style=OUTCOME_STYLES.get(outcome, "red"))


def vm_pairs(vm: Vm) -> list[tuple[str, str]]:
    """A VM's fields for `vm get` / `vm create`."""
    return pairs(vm, frozenset({"stats"}))


def vm_row(vm: Vm) -> list[str]:
    """A row of `vm list`."""
    return [
        vm.vm_id,
        vm.vm_type.label,
        hx(vm.mmio_value),
        str(vm.tdp_root_level),
        str(vm.memslots_generation),
        "on" if vm.tracing_enabled else "off",
        vm.display_name,
    ]


def memslot_row(slot: Memslot) -> list[str]:
    """A row of `memslot list`."""
    flags = [
        name
        for name, on in (
            ("dirty-log", slot.log_dirty_pages),
            ("readonly", slot.readonly),
            ("guest-memfd", slot.guest_memfd),
        )
        if on
    ]
    return [
        str(slot.slot),
        hx(slot.guest_phys_addr),
        hx(slot.guest_phys_addr + slot.memory_size),
        size_text(slot.memory_size),
        hx(slot.base_gfn),
        str(slot.npages),
        slot.backing_page_size.label,
        hx(slot.host_pfn_base),
        ",".join(flags) or "-",
    ]


def size_text(size: int) -> str:
    """4096 -> "4K", 1 << 30 -> "1G"; exact multiples only, else hex bytes."""
    for shift, unit in ((40, "T"), (30, "G"), (20, "M"), (10, "K")):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return hx(size)
