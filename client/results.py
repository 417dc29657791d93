"""Values the client returns for faults, SPTE dumps, decoding, zaps, dirty logs and aging.

Same conventions as `client.types`, except that the packed parallel arrays of
BatchFault and StreamSptes stay numpy arrays (they can hold millions of
entries); `rows()` turns them into typed rows when that is more convenient.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from client.enums import FaultOutcome, SpteFieldKind, SpteKind, TdpRoot
from client.events import Event
from kvmmu.v1 import fault_pb2, spte_pb2

U64Array = npt.NDArray[np.uint64]
U32Array = npt.NDArray[np.uint32]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryFault:
    """A KVM_EXIT_MEMORY_FAULT to userspace (gpa, size, flags)."""

    gpa: int
    size: int
    flags: int
    proto: fault_pb2.MemoryFault = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExplanationStep:
    """One decision of a fault: the kernel function and what it decided."""

    function: str
    text: str
    proto: fault_pb2.ExplanationStep = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultResult:
    """What kvm_mmu_page_fault returned and did; optional fields are None when not reached."""

    outcome: FaultOutcome
    gfn: int
    private: bool
    level: int | None
    spte: int | None
    mmio_check: FaultOutcome | None
    mmio_cache_hit: bool
    fast_path: FaultOutcome | None
    root: TdpRoot | None
    req_level: int | None
    goal_level: int | None
    memory_fault: MemoryFault | None
    dirty_marked: bool
    events: tuple[Event, ...]
    explanation: tuple[ExplanationStep, ...]
    proto: fault_pb2.FaultResponse = field(repr=False, compare=False)


class BatchFaultRow(NamedTuple):
    """One fault of a batch: its GFN, outcome, and the SPTE touched (0 and level 0 if none)."""

    gfn: int
    outcome: FaultOutcome
    spte: int
    level: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchFaultResult:
    """BatchFault's parallel arrays: index i is the fault of the i-th GPA."""

    outcomes: U32Array
    sptes: U64Array
    levels: U32Array
    gfns: U64Array
    proto: fault_pb2.BatchFaultResponse = field(repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.outcomes)

    def rows(self) -> Iterator[BatchFaultRow]:
        """The faults one by one, outcomes as FaultOutcome."""
        for gfn, outcome, spte, level in zip(
            self.gfns.tolist(),
            self.outcomes.tolist(),
            self.sptes.tolist(),
            self.levels.tolist(),
            strict=True,
        ):
            yield BatchFaultRow(gfn, FaultOutcome(outcome), spte, level)

    def counts(self) -> dict[FaultOutcome, int]:
        """How many faults ended with each outcome."""
        values, counts = np.unique(self.outcomes, return_counts=True)
        return {FaultOutcome(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


class SpteEntry(NamedTuple):
    """One SPTE of a dump: its root, first GFN mapped, level and raw value."""

    root: TdpRoot
    gfn: int
    level: int
    value: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpteChunk:
    """One StreamSptes message as parallel arrays: entry i is (roots, gfns, levels, values)[i]."""

    roots: U32Array
    gfns: U64Array
    levels: U32Array
    values: U64Array
    proto: spte_pb2.StreamSptesResponse = field(repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.values)

    def rows(self) -> Iterator[SpteEntry]:
        """The entries one by one."""
        for root, gfn, level, value in zip(
            self.roots.tolist(),
            self.gfns.tolist(),
            self.levels.tolist(),
            self.values.tolist(),
            strict=True,
        ):
            yield SpteEntry(TdpRoot(root), gfn, level, value)


@dataclass(frozen=True, slots=True, kw_only=True)
class SpteField:
    """A named bit field of an SPTE: bits msb..lsb, value shifted down, and its meaning."""

    name: str
    lsb: int
    msb: int
    value: int
    kind: SpteFieldKind
    meaning: str
    proto: spte_pb2.SpteField = field(repr=False, compare=False)

    @property
    def bits(self) -> str:
        """ "12" for one bit, "51:12" for a run."""
        return str(self.lsb) if self.msb == self.lsb else f"{self.msb}:{self.lsb}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MmioSpteInfo:
    """The MMIO decoders of mmu.c applied to an MMIO SPTE."""

    gfn: int
    access: int
    generation: int
    generation_valid: bool | None
    proto: spte_pb2.MmioSpteInfo = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SptePredicates:
    """spte.h predicates evaluated on a value (kernel names)."""

    is_shadow_present_pte: bool
    is_frozen_spte: bool
    is_last_spte: bool
    is_large_pte: bool
    is_writable_pte: bool
    is_mmu_writable_spte: bool
    is_host_writable: bool
    is_accessed_spte: bool
    is_dirty_spte: bool
    is_executable_pte: bool
    spte_ad_enabled: bool
    spte_ad_need_write_protect: bool
    is_access_track_spte: bool
    proto: spte_pb2.SptePredicates = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SpteDecoding:
    """DecodeSpte's answer: every bit field of the value, its kind, and why."""

    value: int
    kind: SpteKind
    level: int | None
    fields: tuple[SpteField, ...]
    reasons: tuple[str, ...]
    verdict: str
    summary: str
    pfn: int | None
    access: str
    mmio: MmioSpteInfo | None
    is_mmio_for_vm: bool
    is_mmio_for_host_value: bool
    reserved_bits: int | None
    misconfig: tuple[str, ...]
    predicates: SptePredicates
    proto: spte_pb2.DecodeSpteResponse = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ZapResult:
    """How many kvm_tdp_mmu_spte_changed events a zap fired."""

    spte_changes: int
    proto: spte_pb2.ZapSptesResponse = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class DirtyLog:
    """A harvested dirty bitmap (KVM_GET_DIRTY_LOG): bit i is page base_gfn + i."""

    base_gfn: int
    npages: int
    bitmap: tuple[int, ...]
    dirty_page_offsets: tuple[int, ...]
    dirty_count: int
    spte_changes: int
    proto: spte_pb2.GetDirtyLogResponse = field(repr=False, compare=False)

    @property
    def dirty_gfns(self) -> list[int]:
        """The GFNs of the dirty pages, ascending."""
        return [self.base_gfn + offset for offset in self.dirty_page_offsets]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgeResult:
    """Whether any present leaf in the range was young, and the SPTE changes aging made."""

    young: bool
    spte_changes: int
    proto: spte_pb2.AgeSptesResponse = field(repr=False, compare=False)
