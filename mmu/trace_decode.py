"""Annotating kernel traces: find SPTE values in kvmmmu events and explain them.

Works on the text of a trace (`cat /sys/kernel/tracing/trace` or
`trace-cmd report`): every kvmmmu event line that prints an SPTE is followed
by one annotation line per SPTE value; every other line passes through
unchanged. Pure: lines in, lines out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from mmu.decode import SpteDecode, SpteKind, decode_spte
from mmu.mmio import MmioVm

_HEX = r"(?:0x)?([0-9a-fA-F]+)"

# event name -> [(label, regex group for the value, regex group for the level or None)]
_PATTERNS: Final[dict[str, re.Pattern[str]]] = {
    "kvm_mmu_set_spte": re.compile(rf"spte {_HEX} \(([-rwxu]*)\) level (\d+)"),
    "check_mmio_spte": re.compile(rf"spte {_HEX} kvm_gen"),
    "kvm_tdp_mmu_spte_changed": re.compile(rf"level (\d+) old_spte {_HEX} new_spte {_HEX}"),
    "fast_page_fault": re.compile(rf"old {_HEX} new {_HEX}"),
    "kvm_mmu_split_huge_page": re.compile(rf"spte {_HEX} level (\d+)"),
}
_EVENT: Final = re.compile(r"\b(?:kvmmmu:)?([a-z_]+):\s")


@dataclass(frozen=True, slots=True)
class FoundSpte:
    label: str
    value: int
    level: int | None


def sptes_in(line: str) -> list[FoundSpte]:
    """The SPTE values a kvmmmu event line prints (empty for any other line)."""
    for match in _EVENT.finditer(line):
        name = match.group(1)
        pattern = _PATTERNS.get(name)
        if pattern is None:
            continue
        body = line[match.end() :]
        found = pattern.search(body)
        if found is None:
            return []
        groups = found.groups()
        if name == "kvm_mmu_set_spte":
            return [FoundSpte("spte", int(groups[0], 16), int(groups[2]))]
        if name == "check_mmio_spte":
            return [FoundSpte("spte", int(groups[0], 16), 1)]
        if name == "kvm_tdp_mmu_spte_changed":
            level = int(groups[0])
            return [
                FoundSpte("old_spte", int(groups[1], 16), level),
                FoundSpte("new_spte", int(groups[2], 16), level),
            ]
        if name == "fast_page_fault":
            return [
                FoundSpte("old", int(groups[0], 16), None),
                FoundSpte("new", int(groups[1], 16), None),
            ]
        if name == "kvm_mmu_split_huge_page":
            return [FoundSpte("spte", int(groups[0], 16), int(groups[1]))]
    return []


def describe(decoded: SpteDecode, vm: MmioVm) -> str:
    """One line: kind, frame, access, MMIO generation and the MMIO verdict for the VM."""
    parts = [decoded.kind.value]
    if decoded.level is not None:
        parts.append(f"level {decoded.level}")
    if decoded.kind == SpteKind.MMIO:
        parts.append(
            f"gfn {decoded.mmio_gfn:#x} access {decoded.mmio_access:#x} "
            f"gen {decoded.mmio_generation:#x}"
        )
    elif decoded.pfn is not None:
        parts.append(f"pfn {decoded.pfn:#x}")
    if decoded.access:
        parts.append(f"({decoded.access})")
    verdict = "MMIO SPTE" if decoded.is_mmio_for_vm else "not an MMIO SPTE"
    parts.append(f"{verdict} for MMIO value {vm.shadow_mmio_value:#x}")
    if decoded.misconfig:
        parts.append("; ".join(decoded.misconfig))
    return ", ".join(parts)


def annotate(lines: Iterable[str], vm: MmioVm, *, prefix: str = "#kvmmu  ") -> Iterator[str]:
    """Every input line, each kvmmmu SPTE line followed by its annotations."""
    for line in lines:
        yield line
        text = line.rstrip("\n")
        for found in sptes_in(text):
            decoded = decode_spte(vm, found.value, found.level)
            yield f"{prefix}{found.label} {found.value:#018x}: {describe(decoded, vm)}"
