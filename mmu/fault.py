"""The page-fault path of a TDP vCPU (mmu.c / tdp_mmu.c; spec 8.3-8.7).

kvm_mmu_page_fault -> handle_mmio_page_fault (RSVD) -> kvm_tdp_page_fault:
fast_page_fault, kvm_mmu_faultin_pfn, kvm_tdp_mmu_map with
kvm_mmu_hugepage_adjust and tdp_mmu_map_handle_target_level. Every decision
is the kernel's; `ctx.step` records the path only when explain was asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from mmu.constants import (
    KVM_MAX_HUGEPAGE_LEVEL,
    KVM_MEMORY_EXIT_FLAG_PRIVATE,
    KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
    KVM_PAGES_PER_HPAGE,
    KVM_PFN_NOSLOT,
    PFERR_FETCH_MASK,
    PFERR_PRESENT_MASK,
    PFERR_PRIVATE_ACCESS,
    PFERR_RSVD_MASK,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
    PG_LEVEL_4K,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    RET_PF_EMULATE,
    RET_PF_INVALID,
    RET_PF_RETRY,
    SHADOW_NONPRESENT_VALUE,
    SPTE_MMU_PRESENT_MASK,
    error_code_label,
)
from mmu.events import Event, ExplainStep, OpContext
from mmu.memslots import SlotState
from mmu.mmio import (
    MmioFaultLeaf,
    check_mmio_spte,
    get_mmio_spte_access,
    get_mmio_spte_generation,
    get_mmio_spte_gfn,
    is_mmio_spte,
    make_mmio_spte,
)
from mmu.pool import TREE_DIRECT, TREE_MIRROR
from mmu.spte import (
    is_access_track_spte,
    is_executable_pte,
    is_mmu_writable_spte,
    make_spte_args,
    restore_acc_track_spte,
)
from mmu.state import MmioCache, VmState
from mmu.tdp_iter import GfnWalk
from mmu.tdp_mmu import (
    KvmBug,
    alloc_table,
    ensure_roots,
    link_sp,
    set_spte,
    split_huge_page,
    track_possible_nx_huge_page,
)


class Outcome(StrEnum):
    """What kvm_mmu_page_fault returned (after WRITE_PROTECTED -> EMULATE)."""

    FIXED = "RET_PF_FIXED"
    SPURIOUS = "RET_PF_SPURIOUS"
    EMULATE = "RET_PF_EMULATE"
    RETRY = "RET_PF_RETRY"
    INVALID = "RET_PF_INVALID"
    WRITE_PROTECTED = "RET_PF_WRITE_PROTECTED"
    CONTINUE = "RET_PF_CONTINUE"
    EFAULT = "EFAULT"
    EINVAL = "EINVAL"
    ENOMEM = "ENOMEM"  # mmu_topup_memory_caches failed: the VM's page-table limit


@dataclass(frozen=True, slots=True)
class MemoryFault:
    """KVM_EXIT_MEMORY_FAULT: userspace must convert the page."""

    gpa: int
    size: int
    flags: int


@dataclass(slots=True)
class FaultResult:
    outcome: Outcome
    gfn: int
    private: bool = False
    mmio_check: Outcome | None = None
    mmio_cache_hit: bool = False
    fast: Outcome | None = None
    root: str | None = None
    req_level: int | None = None
    goal_level: int | None = None
    level: int | None = None
    spte: int | None = None
    memory_fault: MemoryFault | None = None
    dirty_marked: bool = False
    events: list[Event] = field(default_factory=list)
    explain: list[ExplainStep] | None = None
    warnings: list[str] = field(default_factory=list)


class PageFault:
    """struct kvm_page_fault."""

    __slots__ = (
        "addr",
        "error_code",
        "exec",
        "gfn",
        "goal_level",
        "huge_page_disallowed",
        "is_private",
        "map_writable",
        "max_level",
        "nx_workaround",
        "pfn",
        "present",
        "req_level",
        "rsvd",
        "slot",
        "user",
        "write",
    )

    def __init__(self, state: VmState, gpa: int, error_code: int) -> None:
        self.addr = gpa
        self.error_code = error_code
        self.exec = bool(error_code & PFERR_FETCH_MASK)
        self.write = bool(error_code & PFERR_WRITE_MASK)
        self.present = bool(error_code & PFERR_PRESENT_MASK)
        self.rsvd = bool(error_code & PFERR_RSVD_MASK)
        self.user = bool(error_code & PFERR_USER_MASK)
        self.is_private = bool(error_code & PFERR_PRIVATE_ACCESS)
        self.max_level = KVM_MAX_HUGEPAGE_LEVEL
        self.req_level = PG_LEVEL_4K
        self.goal_level = PG_LEVEL_4K
        self.nx_workaround = state.nx_huge_pages
        self.huge_page_disallowed = False
        self.gfn = (gpa >> 12) & ~state.gfn_direct_bits
        self.slot: SlotState | None = state.memslots.lookup(self.gfn)
        self.pfn = -1  # KVM_PFN_ERR_FAULT
        self.map_writable = False


def is_access_allowed(state: VmState, fault: PageFault, spte: int) -> bool:
    if fault.exec:
        return is_executable_pte(state.host, spte)
    if fault.write:
        return bool(spte & PT_WRITABLE_MASK)
    return bool(spte & PT_PRESENT_MASK)


def _present(spte: int) -> bool:
    return bool(spte & SPTE_MMU_PRESENT_MASK)


def _is_last(spte: int, level: int) -> bool:
    return level == PG_LEVEL_4K or bool(spte & PT_PAGE_SIZE_MASK)


def fill_mmio_cache(state: VmState, gfn: int, access: int) -> None:
    """vcpu_cache_mmio_info(): never while a memslot update is in progress."""
    gen = state.generation
    if not gen & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
        state.mmio_cache = MmioCache(gfn, access, gen)


def memory_fault_exit(fault: PageFault, res: FaultResult) -> Outcome:
    """kvm_mmu_prepare_memory_fault_exit(); the fault returns -EFAULT."""
    flags = KVM_MEMORY_EXIT_FLAG_PRIVATE if fault.is_private else 0
    res.memory_fault = MemoryFault(fault.gfn << 12, 4096, flags)
    return Outcome.EFAULT


# --- handle_mmio_page_fault -------------------------------------------------


def handle_mmio_page_fault(state: VmState, ctx: OpContext, gpa: int, res: FaultResult) -> Outcome:
    cache = state.mmio_cache
    gfn = gpa >> 12
    if (
        cache is not None
        and cache.gfn
        and cache.gfn == gfn
        and cache.generation == state.generation
    ):
        res.mmio_cache_hit = True
        if ctx.explain is not None:
            ctx.step("mmio_info_in_cache", lambda: f"vCPU MMIO cache hit for GFN {gfn:#x}: emulate")
        return Outcome.EMULATE
    root = state.direct_root
    assert root is not None
    it = GfnWalk(state, TREE_DIRECT, root, gfn, ctx.warnings)
    sptes: dict[int, int] = {}
    leaf = -1
    while it.valid:
        leaf = it.level
        sptes[leaf] = it.old_spte
        if not it.descend():
            break
    spte = sptes[leaf] if leaf > 0 else 0
    if ctx.explain is not None:
        ctx.step(
            "get_mmio_spte",
            lambda: (
                f"lockless walk of the direct root for GFN {gfn:#x} ended at level {leaf}: "
                f"SPTE {spte:#x}"
                if leaf > 0
                else f"the TDP iterator refuses GFN {gfn:#x} (it has the shared bit): SPTE 0"
            ),
        )
    if leaf > 0:
        lowest = leaf if _present(spte) else leaf + 1
        rsvd = state.host.rsvd
        if rsvd is not None and any(
            rsvd.is_rsvd_spte(sptes[level], level)
            for level in range(state.root_level, lowest - 1, -1)
        ):
            ctx.warnings.append("reserved_bits_on_mmio_walk")
            if ctx.explain is not None:
                ctx.step("get_mmio_spte", lambda: "reserved bits set on the walk: WARN, -EINVAL")
            return Outcome.EINVAL
        res.level, res.spte = leaf, spte
    else:
        res.spte = spte
    leaf_result = _mmio_leaf(state, ctx, spte)
    if leaf_result.gfn is not None and leaf_result.access is not None:
        if leaf_result.result == RET_PF_EMULATE:
            ctx.emit("handle_mmio_page_fault", 0, leaf_result.gfn, leaf_result.access)
            fill_mmio_cache(state, leaf_result.gfn, leaf_result.access)
            if ctx.explain is not None:
                ctx.step(
                    "handle_mmio_page_fault",
                    lambda: (
                        f"MMIO SPTE of this VM, current generation: emulate "
                        f"GFN {leaf_result.gfn:#x}"
                    ),
                )
            return Outcome.EMULATE
        if ctx.explain is not None:
            ctx.step(
                "check_mmio_spte", lambda: "MMIO SPTE with a stale generation: take the normal path"
            )
        return Outcome.INVALID
    if ctx.explain is not None:
        ctx.step(
            "handle_mmio_page_fault",
            lambda: "not an MMIO SPTE of this VM (zapped or another value): retry",
        )
    return Outcome.RETRY


def _mmio_leaf(state: VmState, ctx: OpContext, spte: int) -> MmioFaultLeaf:
    if not is_mmio_spte(state, spte):
        return MmioFaultLeaf(RET_PF_RETRY, None, None, None)
    host = state.host
    gfn, access = get_mmio_spte_gfn(host, spte), get_mmio_spte_access(host, spte)
    check = check_mmio_spte(host.layout, spte, state.generation)
    if check.traced:
        ctx.emit("check_mmio_spte", spte, check.kvm_gen, check.spte_gen, check.valid)
    return MmioFaultLeaf(RET_PF_EMULATE if check.valid else RET_PF_INVALID, check, gfn, access)


# --- fast_page_fault --------------------------------------------------------


def fast_path_refusal(state: VmState, fault: PageFault) -> str | None:
    """page_fault_can_be_fast: None if the fast path may run, else why not (for --explain)."""
    if fault.rsvd:
        return "an RSVD fault"
    if state.has_private_mem and fault.is_private != state.mem_is_private(fault.gfn):
        return "the fault's privateness differs from the GFN's memory attribute"
    if not fault.present:
        if state.host.kvm_ad_enabled:
            return "a not-present fault, and the host has A/D bits (nothing to restore)"
        return None
    return None if fault.write else "a present fault that is not a write"


def fast_page_fault(
    state: VmState, ctx: OpContext, fault: PageFault, res: FaultResult
) -> Outcome | None:
    refusal = fast_path_refusal(state, fault)
    if refusal is not None:
        if ctx.explain is not None:
            ctx.step("page_fault_can_be_fast", lambda: f"no fast path: {refusal}")
        return None
    host = state.host
    root = state.direct_root
    assert root is not None
    it = GfnWalk(state, TREE_DIRECT, root, fault.gfn, ctx.warnings)
    while it.descend():
        pass
    slot, index, level, spte = it.slot, it.index, it.level, it.old_spte
    ret = Outcome.INVALID
    new = spte
    if _present(spte) and _is_last(spte, level):
        if is_access_allowed(state, fault, spte):
            ret = Outcome.SPURIOUS
        else:
            new = spte
            if not host.kvm_ad_enabled and is_access_track_spte(host, spte):
                new = restore_acc_track_spte(host, new) | host.shadow_accessed_mask
            give_up = False
            if fault.write and is_mmu_writable_spte(host, spte):
                new |= PT_WRITABLE_MASK
                give_up = (
                    level > PG_LEVEL_4K and fault.slot is not None and fault.slot.slot.log_dirty
                )
            if not give_up and new != spte and is_access_allowed(state, fault, new):
                state.pool.flat[(slot << 9) | index] = new
                if (
                    new & PT_WRITABLE_MASK
                    and not spte & PT_WRITABLE_MASK
                    and fault.slot is not None
                ):
                    res.dirty_marked = fault.slot.mark_dirty(fault.gfn) or res.dirty_marked
                ret = Outcome.FIXED
    current = new if ret == Outcome.FIXED else spte
    sptep = state.pool.pa(slot) + 8 * index if slot >= 0 else 0
    ctx.emit("fast_page_fault", fault.addr, fault.error_code, spte, current, ret.value, sptep)
    if ctx.explain is not None:
        ctx.step(
            "fast_page_fault",
            lambda: (
                f"lockless fast path on SPTE {spte:#x} at level {level}: {ret.value}"
                + (f" (now {current:#x})" if ret == Outcome.FIXED else "")
            ),
        )
    if ret != Outcome.INVALID:
        state.stats.pf_fast += 1
        res.level, res.spte = level, current
    return ret


# --- kvm_mmu_faultin_pfn ----------------------------------------------------


def faultin_pfn(state: VmState, ctx: OpContext, fault: PageFault, res: FaultResult) -> Outcome:
    host = state.host
    if fault.is_private != state.mem_is_private(fault.gfn):
        if ctx.explain is not None:
            ctx.step(
                "kvm_mmu_faultin_pfn",
                lambda: (
                    f"{'private' if fault.is_private else 'shared'} fault on a GFN whose "
                    f"attribute is {'private' if state.mem_is_private(fault.gfn) else 'shared'}: "
                    "memory-fault exit"
                ),
            )
        return memory_fault_exit(fault, res)
    slot = fault.slot
    if slot is None:
        if fault.is_private:
            if ctx.explain is not None:
                ctx.step(
                    "kvm_handle_noslot_fault",
                    lambda: "private fault without a memslot: memory-fault exit",
                )
            return memory_fault_exit(fault, res)
        # ACC_ALL, not the root's access (8.6 step 2; 12.12(3) covers only make_spte
        # and spte_requested).
        fill_mmio_cache(state, fault.gfn, host.layout.acc_all & host.shadow_mmio_access_mask)
        fault.pfn = KVM_PFN_NOSLOT
        fault.map_writable = False
        if not host.enable_mmio_caching:
            if ctx.explain is not None:
                ctx.step(
                    "kvm_handle_noslot_fault",
                    lambda: "no memslot and MMIO caching disabled: emulate",
                )
            return Outcome.EMULATE
        if fault.gfn > host.kvm_mmu_max_gfn:
            if ctx.explain is not None:
                ctx.step(
                    "kvm_handle_noslot_fault",
                    lambda: "no memslot and GFN above kvm_mmu_max_gfn(): emulate",
                )
            return Outcome.EMULATE
        if ctx.explain is not None:
            ctx.step(
                "kvm_handle_noslot_fault", lambda: "no memslot: an MMIO SPTE will be installed"
            )
        return Outcome.CONTINUE
    memslot = slot.slot
    if fault.is_private:
        if not memslot.guest_memfd or memslot.gmem_pfn_base is None:
            if ctx.explain is not None:
                ctx.step(
                    "kvm_mmu_faultin_pfn_gmem",
                    lambda: "private fault on a slot without guest_memfd",
                )
            return memory_fault_exit(fault, res)
        fault.pfn = memslot.gmem_pfn_base + (fault.gfn - memslot.base_gfn)
        fault.map_writable = not memslot.readonly
        fault.max_level = PG_LEVEL_4K  # order-0 guest_memfd folios
        if ctx.explain is not None:
            ctx.step(
                "kvm_gmem_get_pfn", lambda: f"guest_memfd PFN {fault.pfn:#x}, order 0: 4K only"
            )
        return Outcome.CONTINUE
    if fault.write and memslot.readonly:
        if ctx.explain is not None:
            ctx.step(
                "kvm_handle_error_pfn", lambda: "write to a read-only memslot: emulate (no SPTE)"
            )
        return Outcome.EMULATE
    fault.pfn = memslot.host_pfn_base + (fault.gfn - memslot.base_gfn)
    fault.map_writable = not memslot.readonly
    if ctx.explain is not None:
        ctx.step(
            "__kvm_faultin_pfn",
            lambda: (
                f"memslot {memslot.id} (generation {state.generation:#x}): "
                f"host PFN {fault.pfn:#x}, "
                f"{'writable' if fault.map_writable else 'read-only'}"
            ),
        )
    return Outcome.CONTINUE


# --- kvm_mmu_hugepage_adjust ------------------------------------------------


def max_mapping_level(
    state: VmState, slot: SlotState, gfn: int, max_level: int, is_private: bool
) -> int:
    if is_private or slot.slot.backing_level == PG_LEVEL_4K:
        return PG_LEVEL_4K  # min(host level, lpage level) can only be 4K
    level = slot.max_lpage_level(gfn, min(max_level, state.host.max_huge_page_level))
    if level == PG_LEVEL_4K:
        return PG_LEVEL_4K
    if is_private:
        return PG_LEVEL_4K  # TDX: 4K; SNP/SW_PROTECTED: order-0 guest_memfd folios
    return min(slot.slot.backing_level, level)


def hugepage_adjust(state: VmState, ctx: OpContext, fault: PageFault) -> None:
    fault.huge_page_disallowed = fault.exec and fault.nx_workaround
    if fault.max_level == PG_LEVEL_4K:
        if ctx.explain is not None:
            ctx.step("kvm_mmu_hugepage_adjust", lambda: "max level 4K (private memory): 4K")
        return
    slot = fault.slot
    if slot is None:
        if ctx.explain is not None:
            ctx.step("kvm_mmu_hugepage_adjust", lambda: "no-slot PFN (MMIO): 4K")
        return
    if slot.slot.log_dirty:
        if ctx.explain is not None:
            ctx.step("kvm_mmu_hugepage_adjust", lambda: "memslot logs dirty pages: 4K")
        return
    fault.req_level = max_mapping_level(state, slot, fault.gfn, fault.max_level, fault.is_private)
    if fault.req_level == PG_LEVEL_4K or fault.huge_page_disallowed:
        why = "NX huge pages: exec fault maps 4K" if fault.huge_page_disallowed else "4K"
        if ctx.explain is not None:
            ctx.step(
                "kvm_mmu_max_mapping_level",
                lambda: f"lpage_info/backing allow level {fault.req_level}; {why}",
            )
        return
    fault.goal_level = fault.req_level
    fault.pfn &= ~(KVM_PAGES_PER_HPAGE(fault.goal_level) - 1)
    if ctx.explain is not None:
        ctx.step(
            "kvm_mmu_max_mapping_level",
            lambda: (
                f"slot alignment, HVA congruence and {slot.slot.backing_level}-level backing allow "
                f"level {fault.req_level}: map a huge page, PFN {fault.pfn:#x}"
            ),
        )


def disallowed_hugepage_adjust(state: VmState, fault: PageFault, spte: int, level: int) -> None:
    if (
        level > PG_LEVEL_4K
        and level == fault.goal_level
        and _present(spte)
        and not spte & PT_PAGE_SIZE_MASK
        and state.pool.nx_disallowed[state.child_slot(spte)]
    ):
        fault.pfn |= fault.gfn & (KVM_PAGES_PER_HPAGE(level) - KVM_PAGES_PER_HPAGE(level - 1))
        fault.goal_level -= 1


# --- kvm_tdp_mmu_map --------------------------------------------------------


def tdp_mmu_map(state: VmState, ctx: OpContext, fault: PageFault, res: FaultResult) -> Outcome:
    mirror = state.is_tdx and not (fault.addr >> 12) & state.gfn_direct_bits
    tree = TREE_MIRROR if mirror else TREE_DIRECT
    root = state.root_slot(tree)
    assert root is not None
    res.root = "mirror" if mirror else "direct"
    hugepage_adjust(state, ctx, fault)
    goal = fault.goal_level
    traced_pfn = fault.pfn | (fault.gfn & (KVM_PAGES_PER_HPAGE(goal) - 1))
    ctx.emit("kvm_mmu_spte_requested", fault.gfn, traced_pfn, goal, state.root_access)
    it = GfnWalk(state, tree, root, fault.gfn, ctx.warnings)
    outcome = Outcome.RETRY
    frozen = state.host.layout.frozen_spte
    if ctx.explain is not None:
        ctx.step(
            "kvm_tdp_mmu_map",
            lambda: f"walk the {res.root} root (level {state.root_level}) to level {goal}",
        )
    while True:
        if fault.nx_workaround:
            disallowed_hugepage_adjust(state, fault, it.old_spte, it.level)
        if it.old_spte == frozen:
            break
        if it.level == fault.goal_level:
            outcome = map_target_level(state, ctx, fault, it, res)
            break
        if it.old_spte & SPTE_MMU_PRESENT_MASK and not it.old_spte & PT_PAGE_SIZE_MASK:
            if not it.descend():
                break
            continue
        if tree == TREE_MIRROR and _present(it.old_spte):  # before anything changes
            raise KvmBug("a huge page in the mirror (TDX private) tree")
        child = alloc_table(state, ctx, it.level - 1, it.gfn, tree, fault.huge_page_disallowed)
        if _present(it.old_spte):
            if ctx.explain is not None:
                ctx.step(
                    "tdp_mmu_split_huge_page",
                    lambda: f"split the level-{it.level} huge SPTE {it.old_spte:#x}",
                )
            split_huge_page(state, ctx, it, child, shared=True)
        else:
            if ctx.explain is not None:
                ctx.step(
                    "tdp_mmu_link_sp",
                    lambda: f"level-{it.level} entry empty: a new level-{it.level - 1} table",
                )
            link_sp(state, ctx, it, child, shared=True)
        if (
            fault.huge_page_disallowed
            and fault.req_level >= it.level
            and state.pool.nx_disallowed[child]
        ):
            track_possible_nx_huge_page(state, child)
        if not it.descend():
            break
    res.req_level, res.goal_level = fault.req_level, fault.goal_level
    return outcome


def map_target_level(
    state: VmState, ctx: OpContext, fault: PageFault, it: GfnWalk, res: FaultResult
) -> Outcome:
    host = state.host
    old, level = it.old_spte, it.level
    if _present(old) and is_access_allowed(state, fault, old) and _is_last(old, level):
        if ctx.explain is not None:
            ctx.step(
                "tdp_mmu_map_handle_target_level",
                lambda: f"level-{level} SPTE {old:#x} already allows the access: spurious",
            )
        res.level, res.spte = level, old
        return Outcome.SPURIOUS
    if ctx.explain is not None:
        ctx.step(
            "tdp_mmu_map_handle_target_level",
            lambda: f"level-{level} SPTE found: {old:#x} ({_existing(state, old)})",
        )
    wrprot = False
    if fault.slot is None:
        new = make_mmio_spte(state, it.gfn, host.layout.acc_all, state.generation)  # 8.7.1
        if ctx.explain is not None:
            ctx.step(
                "make_mmio_spte",
                lambda: (
                    f"GFN {it.gfn:#x}, generation {state.generation:#x}, VM MMIO value "
                    f"{state.shadow_mmio_value:#x} -> {new:#x}"
                ),
            )
    else:
        new, wrprot = make_spte_args(
            host,
            level,
            state.root_access,
            fault.pfn,
            old,
            False,  # prefetch
            False,  # synchronizing
            fault.map_writable,
            not host.kvm_ad_enabled,
            False,  # the TDP MMU's roles never need write-protect-only A/D
            state.mt_bits,
            False,  # host MMIO PFNs are not modelled
            False,  # the TDP MMU never refuses to unsync
            state.nx_huge_pages,
            ctx.warnings,
        )
        if ctx.explain is not None:
            ctx.step(
                "make_spte",
                lambda: (
                    f"level {level}, ACC {state.root_access:#x}, PFN {fault.pfn:#x}, host-writable "
                    f"{fault.map_writable}, A/D {'on' if host.kvm_ad_enabled else 'off'}, "
                    f"memory type "
                    f"{state.mt_bits:#x}, old {old:#x} -> {new:#x}"
                ),
            )
        if new & PT_WRITABLE_MASK and fault.slot.slot.log_dirty:
            res.dirty_marked = fault.slot.mark_dirty(it.gfn) or res.dirty_marked
    outcome = Outcome.FIXED
    if new == old:
        outcome = Outcome.SPURIOUS
    else:
        set_spte(state, ctx, it, new, shared=True)
    if wrprot and fault.write:
        outcome = Outcome.WRITE_PROTECTED
    sptep = state.pool.pa(it.slot) + 8 * it.index
    current = state.pool.flat[(it.slot << 9) | it.index]
    if (new & host.shadow_mmio_mask) == state.shadow_mmio_value and host.enable_mmio_caching:
        state.stats.pf_mmio_spte_created += 1
        ctx.emit(
            "mark_mmio_spte",
            it.gfn,
            new & host.layout.acc_all,
            get_mmio_spte_generation(host.layout, new),
            sptep,
        )
        outcome = Outcome.EMULATE
    else:
        ctx.emit("kvm_mmu_set_spte", it.gfn, current, level, sptep)
    res.level, res.spte = level, current
    return outcome


def _existing(state: VmState, spte: int) -> str:
    if spte == SHADOW_NONPRESENT_VALUE:
        return "empty"
    if is_mmio_spte(state, spte):
        return "an MMIO SPTE of this VM"
    if spte & SPTE_MMU_PRESENT_MASK:
        return "present"
    return "not present"


# --- kvm_mmu_page_fault -----------------------------------------------------


def kvm_tdp_page_fault(
    state: VmState, ctx: OpContext, fault: PageFault, res: FaultResult
) -> Outcome:
    fast = fast_page_fault(state, ctx, fault, res)
    if fast is not None:
        res.fast = fast
        if fast != Outcome.INVALID:
            return fast
    if state.pool.live + state.root_level > state.pool.max_tables:
        if ctx.explain is not None:
            ctx.step(
                "mmu_topup_memory_caches", lambda: "no page-table pages left (max_tables): -ENOMEM"
            )
        return Outcome.ENOMEM
    outcome = faultin_pfn(state, ctx, fault, res)
    if outcome != Outcome.CONTINUE:
        return outcome
    return tdp_mmu_map(state, ctx, fault, res)


def _vendor_error_code(state: VmState, gpa: int, error_code: int) -> int:
    """The error code as the exit handler and kvm_mmu_page_fault's first step make it.

    RSVD faults (EPT misconfigurations, #NPF reserved-bit faults) keep what the
    caller gave, so a private RSVD fault still reaches the WARN of 8.3 step 2.
    """
    if error_code & PFERR_RSVD_MASK:
        return error_code
    if state.is_tdx:
        # The EPT-violation handler marks a GPA private exactly when it lacks the
        # shared bit (8.3); the bit is synthetic, hardware never sets it. So a
        # shared GPA is never private (a private PFN in the direct tree) and a
        # private one never shared (a huge page in the mirror tree KVM would BUG on).
        if (gpa >> 12) & state.gfn_direct_bits:
            return error_code & ~PFERR_PRIVATE_ACCESS
        return error_code | PFERR_PRIVATE_ACCESS
    if state.is_sw_protected and state.attributes.is_private(gpa >> 12):
        return error_code | PFERR_PRIVATE_ACCESS  # attributes decide (8.3 step 1)
    return error_code


def page_fault(state: VmState, ctx: OpContext, gpa: int, error_code: int) -> FaultResult:
    """kvm_mmu_page_fault(vcpu, gpa, error_code) as the vendor exit handler calls it."""
    if state.pool.live + 2 > state.pool.max_tables and (
        state.direct_root is None or (state.is_tdx and state.mirror_root is None)
    ):
        return FaultResult(outcome=Outcome.ENOMEM, gfn=(gpa >> 12) & ~state.gfn_direct_bits)
    ensure_roots(state, ctx)
    error_code = _vendor_error_code(state, gpa, error_code)
    fault = PageFault(state, gpa, error_code)
    res = FaultResult(outcome=Outcome.INVALID, gfn=fault.gfn, private=fault.is_private)
    if ctx.explain is not None:
        ctx.step(
            "kvm_mmu_page_fault",
            lambda: (
                f"GPA {gpa:#x} error code {error_code:#x} ({error_code_label(error_code)}):"
                f" GFN {fault.gfn:#x}"
                + (" (TDX shared bit stripped)" if (gpa >> 12) != fault.gfn else "")
                + (", private access" if fault.is_private else ", shared access")
            ),
        )
        slot = fault.slot
        ctx.step(
            "kvm_vcpu_gfn_to_memslot",
            lambda: (
                f"memslot generation {state.generation:#x}: "
                + (
                    f"GFN in memslot {slot.slot.id} [{slot.slot.base_gfn:#x}, "
                    f"{slot.slot.end_gfn:#x}) flags {slot.slot.flags:#x}"
                    if slot is not None
                    else "no memslot backs the GFN"
                )
            ),
        )
    outcome = Outcome.INVALID
    if fault.rsvd:
        if fault.is_private:
            ctx.warnings.append("rsvd_fault_on_private_access")
            res.outcome = Outcome.EFAULT
            return res
        outcome = handle_mmio_page_fault(state, ctx, gpa, res)
        res.mmio_check = outcome
        if outcome == Outcome.EMULATE:
            res.outcome = outcome
            return res
    if outcome == Outcome.INVALID:
        state.stats.pf_taken += 1
        outcome = kvm_tdp_page_fault(state, ctx, fault, res)
        if outcome == Outcome.EMULATE and fault.is_private:
            if ctx.explain is not None:
                ctx.step(
                    "kvm_mmu_page_fault", lambda: "emulation requested on private memory: -EFAULT"
                )
            outcome = memory_fault_exit(fault, res)
    if outcome == Outcome.WRITE_PROTECTED:
        outcome = Outcome.EMULATE
    stats = state.stats
    if outcome == Outcome.FIXED:
        stats.pf_fixed += 1
    elif outcome == Outcome.EMULATE:
        stats.pf_emulate += 1
    elif outcome == Outcome.SPURIOUS:
        stats.pf_spurious += 1
    res.outcome = outcome
    if ctx.explain is not None:
        ctx.step("kvm_mmu_page_fault", lambda: f"result {outcome.value}")
    return res
