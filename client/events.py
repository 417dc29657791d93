"""Events: kvmmmu tracepoint hits and KVM WARNs, with their typed fields.

Same conventions as `client.types`. `Event.fields` holds the one tracepoint
dataclass the event carries (its class matches `Event.name`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from client.enums import FaultOutcome
from kvmmu.v1 import events_pb2


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkMmioSpteEvent:
    """trace_mark_mmio_spte: an MMIO SPTE was installed."""

    sptep: int
    gfn: int
    access: int
    gen: int
    proto: events_pb2.MarkMmioSpteEvent = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class HandleMmioPageFaultEvent:
    """trace_handle_mmio_page_fault: a cached MMIO SPTE answered an RSVD fault."""

    addr: int
    gfn: int
    access: int
    proto: events_pb2.HandleMmioPageFaultEvent = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckMmioSpteEvent:
    """trace_check_mmio_spte: the generation of a cached MMIO SPTE was checked."""

    spte: int
    kvm_gen: int
    spte_gen: int
    valid: bool
    proto: events_pb2.CheckMmioSpteEvent = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class KvmMmuSetSpteEvent:
    """trace_kvm_mmu_set_spte: a leaf SPTE was installed by the map path."""

    gfn: int
    spte: int
    sptep: int
    level: int
    proto: events_pb2.KvmMmuSetSpteEvent = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class KvmMmuSpteRequestedEvent:
    """trace_kvm_mmu_spte_requested: the map path chose GFN, PFN and level."""

    gfn: int
    pfn: int
    level: int
    access: int | None
    proto: events_pb2.KvmMmuSpteRequestedEvent = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class KvmTdpMmuSpteChangedEvent:
    """trace_kvm_tdp_mmu_spte_changed: handle_changed_spte saw an SPTE change."""

    as_id: int
    gfn: int
    level: int
    old_spte: int
    new_spte: int
    proto: events_pb2.KvmTdpMmuSpteChangedEvent = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class FastPageFaultEvent:
    """trace_fast_page_fault: the lockless fast path was attempted."""

    vcpu_id: int
    cr2_or_gpa: int
    error_code: int
    sptep: int
    old_spte: int
    new_spte: int
    ret: FaultOutcome
    proto: events_pb2.FastPageFaultEvent = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class KvmMmuSplitHugePageEvent:
    """trace_kvm_mmu_split_huge_page: a huge SPTE was split into a child table."""

    gfn: int
    spte: int
    level: int
    errno_value: int
    proto: events_pb2.KvmMmuSplitHugePageEvent = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class KvmMmuGetPageEvent:
    """trace_kvm_mmu_get_page: a page table (or root) was allocated."""

    gfn: int
    level: int
    is_mirror: bool
    created: bool
    proto: events_pb2.KvmMmuGetPageEvent = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class KvmMmuPrepareZapPageEvent:
    """trace_kvm_mmu_prepare_zap_page: a page table is being torn down."""

    gfn: int
    level: int
    is_mirror: bool
    proto: events_pb2.KvmMmuPrepareZapPageEvent = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class KvmMmuZapAllFastEvent:
    """kvm_mmu_zap_all_fast: every direct root was invalidated."""

    mmu_valid_gen: int
    used_pages: int
    proto: events_pb2.KvmMmuZapAllFastEvent = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class WarningEvent:
    """A KVM WARN the model reproduced and continued past."""

    name: str
    message: str
    proto: events_pb2.WarningEvent = field(repr=False, compare=False)


EventFields = (
    MarkMmioSpteEvent
    | HandleMmioPageFaultEvent
    | CheckMmioSpteEvent
    | KvmMmuSetSpteEvent
    | KvmMmuSpteRequestedEvent
    | KvmTdpMmuSpteChangedEvent
    | FastPageFaultEvent
    | KvmMmuSplitHugePageEvent
    | KvmMmuGetPageEvent
    | KvmMmuPrepareZapPageEvent
    | KvmMmuZapAllFastEvent
    | WarningEvent
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One event of a VM: sequence number, tracepoint name, its TP_printk text and fields."""

    sequence: int
    name: str
    text: str
    fields: EventFields | None
    proto: events_pb2.Event = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBatch:
    """One message of WatchEvents: consecutive events, and how many were lost before them."""

    events: tuple[Event, ...]
    lost_events: int
    proto: events_pb2.WatchEventsResponse = field(repr=False, compare=False)
