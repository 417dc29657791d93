"""A VM: the public, validating face of one VM's MMU state.

Every method validates its inputs first and raises a `ModelError` (naming
the field) before anything changes; then it runs the KVM operation and
returns what KVM returned. Events are recorded per VM only while tracing is
on, like KVM's tracepoints.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from mmu import aging, dirty_log, memslot_ops, tdp_mmu
from mmu.bits import U64_MASK, fits_u64
from mmu.constants import KVM_PAGES_PER_HPAGE, PG_LEVEL_1G, PG_LEVEL_4K
from mmu.dump import SpteArrays, count_tables, dump_arrays
from mmu.errors import Conflict, HostRejected, InvalidInput, NotFound, Refused
from mmu.events import Event, OpContext
from mmu.fault import FaultResult, page_fault
from mmu.host import Host
from mmu.memslot_ops import MemslotResult
from mmu.memslots import Memslot, Memslots
from mmu.pool import DEFAULT_MAX_TABLES, TREE_DIRECT, TREE_MIRROR, TablePool
from mmu.state import VmState
from mmu.vmtypes import VmType, model_limit_reason, unsupported_reason

ExistingSptes = Literal["refuse", "zap", "keep"]
MAX_MEMSLOT_ID = 32767
MAX_GPA_BITS = 52  # EPT and NPT translate at most 52-bit GPAs
GPA_LIMIT = 1 << MAX_GPA_BITS
DEFAULT_EVENT_HISTORY = 1 << 16


@dataclass(frozen=True, slots=True)
class OpResult:
    """Result of an operation whose only outcome is how many SPTEs changed."""

    spte_changes: int
    events: tuple[Event, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AttributesResult:
    """KVM_SET_MEMORY_ATTRIBUTES: "ok", or "noop" when every GFN already had the attribute."""

    result: str
    spte_changes: int


@dataclass(frozen=True, slots=True)
class AgeResult:
    young: bool
    spte_changes: int


def _u64(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not fits_u64(value):
        raise InvalidInput("must be an unsigned 64-bit integer", field=name)
    return value


def default_mt_bits(host: Host, vm_type: VmType) -> int:
    """What vmx_get_mt_mask returns for RAM: WB+IPAT, WB for a TD; nothing without EPT."""
    if not host.has_get_mt_mask:
        return 0
    return 0x30 if vm_type == VmType.TDX else 0x70


class Vm:
    """One VM (with one vCPU) on a host."""

    def __init__(
        self,
        host: Host,
        vm_type: VmType = VmType.DEFAULT,
        *,
        vm_id: str = "",
        name: str = "",
        guest_maxphyaddr: int | None = None,
        mt_bits: int | None = None,
        slot_zap_all_quirk: bool = True,
        initial_generation: int = 0,
        tracing: bool = False,
        max_tables: int = DEFAULT_MAX_TABLES,
        event_history: int = DEFAULT_EVENT_HISTORY,
    ) -> None:
        limit = model_limit_reason(host)
        if limit is not None:
            raise Refused(limit, field="host.mmu" if not host.tdp_enabled else "host.tdp_mmu")
        reason = unsupported_reason(host, vm_type)
        if reason is not None:
            raise Refused(reason, field="vm_type")
        gma = self._guest_maxphyaddr(host, vm_type, guest_maxphyaddr)
        if mt_bits is not None and (mt_bits & ~0x78):
            raise InvalidInput("memory-type bits live in SPTE bits 3..6", field="mt_bits")
        _u64(initial_generation, "initial_generation")
        if initial_generation & (1 << 63):
            raise InvalidInput("bit 63 marks an update in progress", field="initial_generation")
        self.id = vm_id
        self.name = name
        self.tracing = tracing
        self.state = VmState(
            host=host,
            vm_type=vm_type,
            guest_maxphyaddr=gma,
            shadow_mmio_value=0 if vm_type == VmType.TDX else host.shadow_mmio_value,
            mt_bits=default_mt_bits(host, vm_type) if mt_bits is None else mt_bits,
            slot_zap_all_quirk=slot_zap_all_quirk,
            pool=TablePool(max_tables),
            memslots=Memslots(initial_generation),
        )
        self.event_log: deque[tuple[int, Event]] = deque(maxlen=event_history)
        self.next_event_seq = 1
        self.ops_applied = 0

    @staticmethod
    def _guest_maxphyaddr(host: Host, vm_type: VmType, value: int | None) -> int:
        cfg = host.config
        if value is None:
            if vm_type == VmType.TDX:
                return 52 if cfg.max_tdp_level == 5 else 48
            return cfg.maxphyaddr
        if vm_type == VmType.TDX and value not in (48, 52):
            raise InvalidInput("a TD's GPA width (GPAW) is 48 or 52", field="guest_maxphyaddr")
        if vm_type == VmType.TDX and value == 52 and cfg.max_tdp_level != 5:
            raise Refused("GPAW 52 needs 5-level EPT on the host", field="guest_maxphyaddr")
        if not 32 <= value <= 52:
            raise InvalidInput("must be between 32 and 52", field="guest_maxphyaddr")
        return value

    # --- properties -------------------------------------------------------

    @property
    def host(self) -> Host:
        return self.state.host

    @property
    def vm_type(self) -> VmType:
        return self.state.vm_type

    @property
    def shadow_mmio_value(self) -> int:
        return self.state.shadow_mmio_value

    @property
    def generation(self) -> int:
        return self.state.generation

    @property
    def guest_maxphyaddr(self) -> int:
        return self.state.guest_maxphyaddr

    @property
    def gfn_direct_bits(self) -> int:
        """The TD's shared bit as a GFN bit (0 for other VMs)."""
        return self.state.gfn_direct_bits

    @property
    def mt_bits(self) -> int:
        return self.state.mt_bits

    @property
    def root_level(self) -> int:
        return self.state.root_level

    @property
    def nr_memslot_as_ids(self) -> int:
        return self.state.nr_as_ids

    def attributes(self) -> list[tuple[int, int]]:
        """The GFN ranges [start, end) that are private."""
        return self.state.attributes.intervals()

    def stats(self) -> dict[str, int]:
        return self.state.stats.as_dict()

    def tables(self) -> dict[str, int]:
        return count_tables(self.state)

    def memslots(self) -> list[Memslot]:
        return [s.slot for s in self.state.memslots.states()]

    def spte_count(self) -> int:
        s = self.state.stats
        return s.pages_4k + s.pages_2m + s.pages_1g

    # --- event log ----------------------------------------------------------

    def _context(self, *, events: bool = False, explain: bool = False) -> OpContext:
        return OpContext(events=events or self.tracing, explain=explain)

    def _finish(self, ctx: OpContext) -> None:
        self.ops_applied += 1
        if self.tracing and ctx.events:
            for event in ctx.events:
                self.event_log.append((self.next_event_seq, event))
                self.next_event_seq += 1

    def events_since(self, seq: int) -> tuple[list[tuple[int, Event]], int]:
        """Logged events with sequence >= seq, and how many of those were dropped."""
        oldest = self.event_log[0][0] if self.event_log else self.next_event_seq
        lost = max(0, oldest - seq) if seq < oldest else 0
        return [(s, e) for s, e in self.event_log if s >= seq], lost

    # --- MMIO value ----------------------------------------------------------

    def check_mmio_value(self, value: int) -> None:
        """Rules for a per-VM MMIO value (spec 2.2 and 5.3)."""
        _u64(value, "value")
        host = self.host
        mask = host.shadow_mmio_mask
        if value & ~mask:
            raise HostRejected(
                f"{value:#x} has bits outside the host's MMIO mask {mask:#x}", field="value"
            )
        if value & (host.shadow_nonpresent_or_rsvd_mask << 5):
            raise HostRejected("value overlaps the L1TF-relocated GPA bits", field="value")
        if value and (host.layout.frozen_spte & mask) == value:
            raise HostRejected("FROZEN_SPTE would look like an MMIO SPTE", field="value")
        if (1 << 63) & mask == value:
            raise HostRejected(
                "SHADOW_NONPRESENT_VALUE would look like an MMIO SPTE (every empty SPTE)",
                field="value",
            )

    def set_mmio_value(
        self, value: int, *, existing: ExistingSptes = "refuse", validate: bool = True
    ) -> OpResult:
        """kvm_mmu_set_mmio_spte_value with a safety policy for SPTEs already present.

        "refuse": fail if the VM holds SPTEs; "zap": zap every SPTE first
        (atomically); "keep": KVM's plain store, after which MMIO SPTEs with
        the old pattern are no longer recognised. `validate=False` is the
        kernel hook exactly (a plain store, as tdx_vm_init uses it).
        """
        if existing not in ("refuse", "zap", "keep"):
            raise InvalidInput("must be refuse, zap or keep", field="existing")
        if validate:
            self.check_mmio_value(value)
        else:
            _u64(value, "value")
        holds = self.spte_count() > 0 or bool(len(dump_arrays(self.state)))
        if existing == "refuse" and holds:
            raise Refused(
                "the VM holds SPTEs; zap them first (zap_existing) to change its MMIO value",
                field="value",
            )
        ctx = self._context()
        if existing == "zap":
            for tree in (TREE_DIRECT, TREE_MIRROR):
                tdp_mmu.zap_root(self.state, ctx, tree)
        self.state.shadow_mmio_value = value
        self._finish(ctx)
        return OpResult(ctx.spte_changes, tuple(ctx.events or ()), tuple(ctx.warnings))

    # --- memslots -------------------------------------------------------------

    def _slot_args(self, slot: Memslot, *, moving: bool = False) -> None:
        """Checks KVM makes before anything changes (and the model's own BUG guards).

        A MOVE beyond kvm_mmu_max_gfn() is refused only after the old range was
        zapped (spec 4.3), so for a move only a range past 2^64 bytes fails here.
        """
        if not 0 <= slot.id <= MAX_MEMSLOT_ID:
            raise InvalidInput(f"must be 0..{MAX_MEMSLOT_ID}", field="slot")
        for name in ("base_gfn", "npages", "userspace_addr", "host_pfn_base"):
            _u64(getattr(slot, name), name)
        if slot.npages == 0:
            raise InvalidInput("a memslot needs at least one page", field="npages")
        if moving and slot.base_gfn + slot.npages > 1 << (64 - 12):  # GFNs of 2^64 bytes
            raise InvalidInput("the moved memslot would end beyond 2^64 bytes", field="base_gfn")
        if not moving and slot.base_gfn + slot.npages > 1 << (MAX_GPA_BITS - 12):
            raise InvalidInput("the memslot ends beyond the 52-bit GPA space", field="npages")
        if slot.userspace_addr & 0xFFF:
            raise InvalidInput("must be page aligned", field="userspace_addr")
        if slot.backing_level not in (1, 2, 3):
            raise InvalidInput("must be 1 (4K), 2 (2M) or 3 (1G)", field="backing_level")
        limit = 1 << (self.host.config.maxphyaddr - 12)
        if slot.host_pfn_base + slot.npages > limit:
            raise HostRejected("host PFNs beyond the host's MAXPHYADDR", field="host_pfn_base")
        if slot.gmem_pfn_base is not None:
            _u64(slot.gmem_pfn_base, "gmem_pfn_base")
            if slot.gmem_pfn_base + slot.npages > limit:
                raise HostRejected("PFNs beyond the host's MAXPHYADDR", field="gmem_pfn_base")
        for level in range(2, min(slot.backing_level, self.host.max_huge_page_level) + 1):
            size = KVM_PAGES_PER_HPAGE(level)
            if not slot.hva_incongruent(level) and (slot.host_pfn_base ^ slot.base_gfn) & (
                size - 1
            ):
                raise InvalidInput(
                    f"host PFN not congruent with the GFN modulo the {level}-level page size "
                    "while the HVA is (KVM would BUG on the huge mapping)",
                    field="host_pfn_base",
                )

    def _memslot_op(self, run: object) -> MemslotResult:
        ctx = self._context()
        assert callable(run)
        result: MemslotResult = run(ctx)
        self._finish(ctx)
        return result

    def create_memslot(self, slot: Memslot) -> MemslotResult:
        self._slot_args(slot)
        return self._memslot_op(lambda ctx: memslot_ops.create(self.state, ctx, slot))

    def delete_memslot(self, slot_id: int) -> MemslotResult:
        return self._memslot_op(lambda ctx: memslot_ops.delete(self.state, ctx, slot_id))

    def move_memslot(self, slot_id: int, new_base_gfn: int) -> MemslotResult:
        _u64(new_base_gfn, "base_gfn")
        existing = self.state.memslots.get(slot_id)
        if existing is not None:
            moved = replace(existing.slot, base_gfn=new_base_gfn)
            self._slot_args(moved, moving=True)
        return self._memslot_op(
            lambda ctx: memslot_ops.move(self.state, ctx, slot_id, new_base_gfn)
        )

    def set_dirty_logging(self, slot_id: int, enable: bool) -> MemslotResult:
        return self._memslot_op(
            lambda ctx: memslot_ops.set_dirty_logging(self.state, ctx, slot_id, enable)
        )

    def resize_memslot(self, slot: Memslot) -> tuple[MemslotResult, MemslotResult]:
        """KVM cannot resize a memslot; userspace deletes and re-creates it. Both, atomically."""
        self._slot_args(slot)
        old = self.state.memslots.get(slot.id)
        if old is None:
            raise Refused(f"memslot {slot.id} does not exist", field="slot")
        memslot_ops.check_flags(self.state, slot.flags)
        clash = self.state.memslots.overlapping(slot.base_gfn, slot.npages, ignore=slot.id)
        if clash is not None:
            raise Conflict(
                f"the new range overlaps memslot {clash.slot.id}", field="npages", errno="EEXIST"
            )
        memslot_ops.check_range(self.state, slot.base_gfn, slot.npages)
        deleted = self.delete_memslot(slot.id)
        return deleted, self.create_memslot(slot)

    def set_memory_attributes(self, start: int, end: int, private: bool) -> AttributesResult:
        _u64(start, "start_gfn")
        _u64(end, "end_gfn")
        ctx = self._context()
        result = memslot_ops.set_memory_attributes(self.state, ctx, start, end, private)
        self._finish(ctx)
        return AttributesResult(result, ctx.spte_changes)

    # --- faults ---------------------------------------------------------------

    def check_gpa(self, gpa: int, field_name: str = "gpa") -> None:
        _u64(gpa, field_name)
        if gpa >> MAX_GPA_BITS:
            raise InvalidInput(
                f"GPA {gpa:#x} is beyond the {MAX_GPA_BITS}-bit physical address space of x86",
                field=field_name,
            )

    def fault(
        self, gpa: int, error_code: int = 0, *, explain: bool = False, events: bool = True
    ) -> FaultResult:
        """kvm_mmu_page_fault(gpa, error_code) on the VM's vCPU."""
        # One cheap test for the common case (plain ints in range), the full checks,
        # with their messages, otherwise.
        if not (
            type(gpa) is int
            and type(error_code) is int
            and 0 <= gpa < GPA_LIMIT
            and 0 <= error_code <= U64_MASK
        ):
            self.check_gpa(gpa)
            _u64(error_code, "error_code")
        ctx = self._context(events=events, explain=explain)
        result = page_fault(self.state, ctx, gpa, error_code)
        result.events = ctx.events or []
        result.explain = ctx.explain
        result.warnings = ctx.warnings
        self._finish(ctx)
        return result

    def fault_batch(
        self,
        gpas: Sequence[int] | npt.NDArray[np.uint64],
        error_codes: Sequence[int] | npt.NDArray[np.uint64] | int = 0,
    ) -> BatchResult:
        from mmu.fault_batch import run_batch  # noqa: PLC0415

        gpa_array = np.asarray(gpas, dtype=np.uint64)
        if np.ndim(error_codes) == 0:
            codes = np.full(len(gpa_array), int(error_codes), dtype=np.uint64)  # type: ignore[arg-type]
        else:
            codes = np.asarray(error_codes, dtype=np.uint64)
        if len(codes) != len(gpa_array):
            raise InvalidInput("one error code per GPA, or a single one", field="error_codes")
        too_high = gpa_array >> np.uint64(MAX_GPA_BITS)
        if len(gpa_array) and too_high.any():
            first = int(np.flatnonzero(too_high)[0])
            raise InvalidInput(
                f"gpas[{first}] = {int(gpa_array[first]):#x} is beyond 52 physical address bits",
                field=f"gpas[{first}]",
            )
        result: BatchResult = run_batch(self, gpa_array, codes)
        return result

    # --- zapping, dirty log, aging -------------------------------------------

    def _op(self, run: object) -> OpResult:
        ctx = self._context()
        assert callable(run)
        run(ctx)
        self._finish(ctx)
        return OpResult(ctx.spte_changes, tuple(ctx.events or ()), tuple(ctx.warnings))

    def zap_gfn_range(self, start: int, end: int) -> OpResult:
        """kvm_zap_gfn_range: every leaf SPTE in [start, end), in every root."""
        _u64(start, "start_gfn")
        _u64(end, "end_gfn")
        if start > end:
            raise InvalidInput("start_gfn must not exceed end_gfn", field="end_gfn")
        return self._op(lambda ctx: tdp_mmu.zap_gfn_range(self.state, ctx, start, end))

    def zap_all_fast(self) -> OpResult:
        """kvm_mmu_zap_all_fast: drop the direct root and everything below it."""
        return self._op(lambda ctx: tdp_mmu.zap_all_fast(self.state, ctx))

    def zap_memslot(self, slot_id: int) -> OpResult:
        """Unmap a memslot's GFNs in every root (private and shared), keeping the slot."""
        state = self.state.memslots.get(slot_id)
        if state is None:
            raise NotFound(f"memslot {slot_id} does not exist", field="slot")
        slot = state.slot
        return self._op(
            lambda ctx: tdp_mmu.unmap_gfn_range(
                self.state, ctx, slot.base_gfn, slot.end_gfn, shared=True, private=True
            )
        )

    def get_dirty_log(self, slot_id: int) -> dirty_log.DirtyLog:
        ctx = self._context()
        log = dirty_log.get_dirty_log(self.state, ctx, slot_id)
        self._finish(ctx)
        return log

    def age(self, start: int, end: int, *, test_only: bool = False) -> AgeResult:
        _u64(start, "start_gfn")
        _u64(end, "end_gfn")
        ctx = self._context()
        young = aging.age_range(self.state, ctx, start, end, test_only)
        self._finish(ctx)
        return AgeResult(young, ctx.spte_changes)

    # --- dump -----------------------------------------------------------------

    def dump(
        self,
        *,
        start: int = 0,
        end: int | None = None,
        level: int | None = None,
        only_present: bool = False,
        include_nonleaf: bool = False,
        root: str | None = None,
    ) -> SpteArrays:
        if level is not None and not PG_LEVEL_4K <= level <= 5:
            raise InvalidInput("must be 1..5", field="level")
        if root not in (None, "direct", "mirror"):
            raise InvalidInput("must be direct or mirror", field="root")
        tree = None if root is None else (TREE_DIRECT if root == "direct" else TREE_MIRROR)
        return dump_arrays(
            self.state,
            start=start,
            end=end,
            level=level,
            only_present=only_present,
            include_nonleaf=include_nonleaf,
            tree=tree,
        )


from mmu.fault_batch import BatchResult  # noqa: E402  (circular: fault_batch uses Vm)

__all__ = ["PG_LEVEL_1G", "AgeResult", "AttributesResult", "BatchResult", "OpResult", "Vm"]
