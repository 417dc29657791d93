"""kvmmmu tracepoint events and the per-operation context that collects them.

An event is a tuple `(name, *values)` in the tracepoint's field order (the
order of EVENT_FIELDS). Cheap to build, and only built when someone is
listening: a context without an event list records nothing but counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

Event = tuple[Any, ...]

EVENT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "kvm_mmu_get_page": ("gfn", "level", "mirror", "access"),
    "kvm_mmu_prepare_zap_page": ("gfn", "level", "mirror", "access"),
    "kvm_mmu_spte_requested": ("gfn", "pfn", "level", "access"),
    "kvm_tdp_mmu_spte_changed": ("as_id", "gfn", "level", "old_spte", "new_spte"),
    "kvm_mmu_split_huge_page": ("gfn", "spte", "level", "errno"),
    "mark_mmio_spte": ("gfn", "access", "gen", "sptep"),
    "kvm_mmu_set_spte": ("gfn", "spte", "level", "sptep"),
    "check_mmio_spte": ("spte", "kvm_gen", "spte_gen", "valid"),
    "handle_mmio_page_fault": ("addr", "gfn", "access"),
    "fast_page_fault": ("gpa", "error_code", "old_spte", "new_spte", "ret", "sptep"),
    "kvm_mmu_zap_all_fast": ("mmu_valid_gen", "used_pages"),
}

# How many leading fields of each event the golden vectors record.
VECTOR_ARITY: Final = {
    "kvm_mmu_get_page": 3,
    "kvm_mmu_prepare_zap_page": 2,
    "kvm_mmu_spte_requested": 3,
    "mark_mmio_spte": 3,
    "kvm_mmu_set_spte": 3,
    "fast_page_fault": 5,
}


def event_dict(event: Event) -> dict[str, Any]:
    name = event[0]
    return dict(zip(EVENT_FIELDS[name], event[1:], strict=True))


@dataclass(frozen=True, slots=True)
class ExplainStep:
    """One step of a fault's decision path, named after the KVM function it models."""

    function: str
    text: str


class OpContext:
    """What one model operation produced besides its result."""

    __slots__ = ("events", "explain", "spte_changes", "warnings")

    def __init__(self, *, events: bool = False, explain: bool = False) -> None:
        self.events: list[Event] | None = [] if events else None
        self.explain: list[ExplainStep] | None = [] if explain else None
        self.spte_changes = 0
        self.warnings: list[str] = []

    def emit(self, *event: Any) -> None:
        if self.events is not None:
            self.events.append(event)

    def step(self, function: str, text: Callable[[], str]) -> None:
        """Record a decision; `text` is only evaluated when explaining."""
        if self.explain is not None:
            self.explain.append(ExplainStep(function, text()))
