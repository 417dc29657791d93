"""Many faults at once, with exactly the results of faulting them one by one.

Runs of "simple" faults are done with numpy: each maps a fresh leaf (4K, 2M
or 1G, or a 4K MMIO SPTE) into an empty entry, or is emulated without an
SPTE (unbacked GFN with MMIO caching off, write to a read-only slot), and no
two faults of a run touch the same entry or each other's path. Tables are
allocated in the order the sequential path would allocate them, so even the
non-leaf SPTEs are identical. Every other fault -- and every fault while the
VM is tracing -- goes through the scalar path, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from mmu.batch import make_mmio_spte_batch, make_spte_batch
from mmu.constants import (
    KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
    PFERR_FETCH_MASK,
    PFERR_PRESENT_MASK,
    PFERR_PRIVATE_ACCESS,
    PFERR_RSVD_MASK,
    PFERR_WRITE_MASK,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    SHADOW_NONPRESENT_VALUE,
    SPTE_MMU_PRESENT_MASK,
)
from mmu.events import OpContext
from mmu.fault import Outcome
from mmu.pool import TABLE_PFN_BASE, TREE_DIRECT
from mmu.state import MmioCache, VmState
from mmu.tdp_mmu import ensure_roots
from mmu.vmtypes import VmType

if TYPE_CHECKING:
    from mmu.vm import Vm

OUTCOME_CODES: dict[Outcome, int] = {
    Outcome.RETRY: 1,
    Outcome.EMULATE: 2,
    Outcome.WRITE_PROTECTED: 3,
    Outcome.INVALID: 4,
    Outcome.FIXED: 5,
    Outcome.SPURIOUS: 6,
    Outcome.ENOMEM: 12,
    Outcome.EFAULT: 14,
    Outcome.EINVAL: 22,
}
CODE_OUTCOMES = {code: outcome for outcome, code in OUTCOME_CODES.items()}
FIXED, EMULATE = OUTCOME_CODES[Outcome.FIXED], OUTCOME_CODES[Outcome.EMULATE]

MIN_WINDOW = 256
MAX_WINDOW = 1 << 17
U64 = np.uint64
I64Array = npt.NDArray[np.int64]
U64Array = npt.NDArray[np.uint64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Per fault, in input order: outcome code, SPTE (0 if none), level (0 if none), GFN."""

    outcomes: npt.NDArray[np.int8]
    sptes: U64Array
    levels: npt.NDArray[np.int8]
    gfns: U64Array
    vectorised: int = 0

    def __len__(self) -> int:
        return len(self.outcomes)

    def outcome(self, i: int) -> Outcome:
        return CODE_OUTCOMES[int(self.outcomes[i])]


class _Out:
    def __init__(self, n: int) -> None:
        self.outcomes = np.zeros(n, dtype=np.int8)
        self.sptes = np.zeros(n, dtype=np.uint64)
        self.levels = np.zeros(n, dtype=np.int8)
        self.gfns = np.zeros(n, dtype=np.uint64)
        self.vectorised = 0


def run_batch(vm: Vm, gpas: U64Array, codes: U64Array) -> BatchResult:
    state = vm.state
    n = len(gpas)
    out = _Out(n)
    if n == 0:
        return BatchResult(out.outcomes, out.sptes, out.levels, out.gfns)
    vector_ok = not vm.tracing and not state.attributes
    if vector_ok and state.pool.live + 2 <= state.pool.max_tables:
        ctx = OpContext()
        ensure_roots(state, ctx)
    pos, window = 0, 4096
    while pos < n:
        scalar_end = pos + 1
        if vector_ok and state.direct_root is not None:
            end = min(n, pos + window)
            done, next_simple = _vector_run(state, gpas, codes, pos, end, out)
            vm.ops_applied += done - pos
            if done == end:
                window = min(MAX_WINDOW, window * 2)
                pos = done
                continue
            window = max(MIN_WINDOW, window // 2)
            pos = done
            # Faults the analysis found not simple are done alone without analysing
            # the window again for each (a batch of re-faults on mapped memory).
            scalar_end = max(pos + 1, next_simple)
        elif not vector_ok:
            scalar_end = n
        # The run stopped at faults it cannot take (or tracing is on): do them alone.
        for i in range(pos, scalar_end):
            _scalar(vm, gpas, codes, i, out)
        pos = scalar_end
    return BatchResult(out.outcomes, out.sptes, out.levels, out.gfns, out.vectorised)


def _scalar(vm: Vm, gpas: U64Array, codes: U64Array, i: int, out: _Out) -> None:
    res = vm.fault(int(gpas[i]), int(codes[i]), events=False)
    out.outcomes[i] = OUTCOME_CODES.get(res.outcome, 0)
    out.sptes[i] = res.spte or 0
    out.levels[i] = res.level or 0
    out.gfns[i] = res.gfn


class _Slots:
    """Per-memslot properties as arrays indexed like Memslots.states()."""

    def __init__(self, state: VmState) -> None:
        slots = [s.slot for s in state.memslots.states()]
        self.base = np.array([s.base_gfn for s in slots], dtype=np.uint64)
        self.end = np.array([s.end_gfn for s in slots], dtype=np.uint64)
        self.pfn = np.array([s.host_pfn_base for s in slots], dtype=np.uint64)
        self.readonly = np.array([s.readonly for s in slots], dtype=np.bool_)
        self.log_dirty = np.array([s.log_dirty for s in slots], dtype=np.bool_)
        self.backing = np.array([s.backing_level for s in slots], dtype=np.int64)
        self.incongruent = {
            level: np.array([s.hva_incongruent(level) for s in slots], dtype=np.bool_)
            for level in (2, 3)
        }
        self.states = state.memslots.states()


def _goal_levels(state: VmState, gfn: U64Array, sidx: I64Array, slots: _Slots) -> I64Array:
    """kvm_mmu_hugepage_adjust for non-exec, shared faults on ordinary slots."""
    m = len(gfn)
    goal = np.ones(m, dtype=np.int64)
    max_level = min(3, state.host.max_huge_page_level)
    if max_level < 2 or m == 0 or not (slots.backing[~slots.log_dirty] > 1).any():
        return goal  # only 4K-backed or dirty-logging slots: everything maps 4K
    safe = np.maximum(sidx, 0)
    base, end = slots.base[safe], slots.end[safe]
    lpage = np.ones(m, dtype=np.int64)
    for level in range(2, max_level + 1):
        shift = U64(9 * (level - 1))
        size = U64(1 << (9 * (level - 1)))
        frame = (gfn >> shift) - (base >> shift)
        last = ((end - U64(1)) >> shift) - (base >> shift)
        head = (frame == U64(0)) & ((base % size) != U64(0))
        tail = (frame == last) & ((end % size) != U64(0))
        allowed = ~(head | tail | slots.incongruent[level][safe])
        lpage = np.where(allowed, level, lpage)
    req = np.minimum(lpage, slots.backing[safe])
    ok = (sidx >= 0) & ~slots.log_dirty[safe]
    return np.where(ok, np.maximum(req, 1), goal)


def _first_conflict(gfn: U64Array, goal: I64Array, simple: BoolArray) -> int:
    """Smallest index j whose entry or path meets an earlier simple fault's target."""
    first = len(gfn)
    for level in (1, 2, 3):
        if not (goal == level).any():
            continue  # conflicts at a level need a fault that maps there
        if level == 1 and len(gfn) > 1 and bool(np.all(gfn[1:] > gfn[:-1])):
            continue  # strictly increasing GFNs: no two share an entry
        sel = np.flatnonzero(simple & (goal <= level))
        if len(sel) < 2:
            continue
        keys = gfn[sel] >> U64(9 * (level - 1))
        order = np.lexsort((sel, keys))
        ks, idx = keys[order], sel[order]
        has_level = goal[idx] == level
        starts = np.flatnonzero(np.concatenate(([True], ks[1:] != ks[:-1])))
        sizes = np.diff(np.r_[starts, len(ks)])
        group_has = np.add.reduceat(has_level.astype(np.int64), starts) > 0
        bad = starts[(sizes >= 2) & group_has]
        if len(bad):
            first = min(first, int(idx[bad + 1].min()))
    return first


def _vector_run(
    state: VmState, gpas: U64Array, codes: U64Array, pos: int, end: int, out: _Out
) -> tuple[int, int]:
    """Apply the longest prefix of [pos, end) that is simple.

    Returns where it stopped and, if it stopped at once, where the next fault
    that looked simple is (``end`` if none), so the caller can take the faults
    in between one by one without analysing the window again for each; the
    scalar path is right for any fault, so what those faults change is no risk.
    """
    host = state.host
    gpa = gpas[pos:end]
    ec = codes[pos:end]
    m = end - pos
    gfn_full = gpa >> U64(12)
    bits = U64(state.gfn_direct_bits)
    gfn = gfn_full & ~bits
    simple = (ec & U64(PFERR_RSVD_MASK | PFERR_PRIVATE_ACCESS)) == U64(0)
    if state.vm_type == VmType.TDX:
        simple &= (gfn_full & bits) != U64(0)
    write = (ec & U64(PFERR_WRITE_MASK)) != U64(0)
    if state.nx_huge_pages:
        simple &= (ec & U64(PFERR_FETCH_MASK)) == U64(0)
    slots = _Slots(state)
    sidx = state.memslots.lookup_many(gfn)
    safe = np.maximum(sidx, 0)
    has_slot = sidx >= 0
    ro_write = has_slot & write & slots.readonly[safe] if len(slots.base) else has_slot
    noslot = ~has_slot
    max_gfn = U64(host.kvm_mmu_max_gfn)
    noslot_map = noslot & host.enable_mmio_caching & (gfn <= max_gfn)
    maps = (has_slot & ~ro_write) | noslot_map
    goal = _goal_levels(state, gfn, sidx, slots) if len(slots.base) else np.ones(m, np.int64)
    goal = np.where(has_slot & ~ro_write, goal, 1)

    # Read-only walk: existing tables on the path, where the path first meets an empty
    # entry. Faults with the same level-2 entry, goal and kind share the upper walk.
    pool = state.pool
    entries = pool.entries
    root = state.direct_root
    assert root is not None
    pkey = (((gfn >> U64(9)) << U64(3)) | goal.astype(np.uint64)) << U64(1) | maps.astype(np.uint64)
    if m > 1 and bool(np.all(pkey[1:] >= pkey[:-1])):
        new_group = np.concatenate(([True], pkey[1:] != pkey[:-1]))
        reps = np.flatnonzero(new_group)
        inv = np.cumsum(new_group) - 1
    else:
        _, reps, inv = np.unique(pkey, return_index=True, return_inverse=True)
    r_simple, r_fresh, r_table, r_cur, r_walking = _walk_upper(
        state, gfn[reps], goal[reps], maps[reps], simple[reps].copy(), root
    )
    simple &= r_simple[inv]
    r_table[1] = r_cur
    # Level 1, per fault: the faults whose walk reached a level-1 table.
    low = np.flatnonzero(r_walking[inv] & simple)
    if len(low):
        e = entries[r_cur[inv[low]], (gfn[low] & U64(511)).astype(np.int64)]
        present = (e & U64(SPTE_MMU_PRESENT_MASK)) != U64(0)
        empty = e == U64(SHADOW_NONPRESENT_VALUE)
        simple[low[present]] = False  # a present leaf: the fast path might act
        simple[low[maps[low] & ~empty]] = False  # a mapping fault needs an empty target

    k = m
    nonsimple = np.flatnonzero(~simple)
    if len(nonsimple):
        k = int(nonsimple[0])
    k = min(k, _first_conflict(gfn, goal, simple))
    if k == 0:
        later = np.flatnonzero(simple[1:])
        return pos, pos + 1 + int(later[0]) if len(later) else end
    walk = _RepWalk(reps, inv, r_fresh, r_table)
    run = _Run(gfn[:k], goal[:k], maps[:k], noslot[:k], sidx[:k])
    return pos + _apply(state, run, walk, slots, out, pos), end


@dataclass(frozen=True, slots=True)
class _RepWalk:
    """Upper-walk results per representative (first fault of each path key)."""

    reps: I64Array  # fault index of each representative
    inv: I64Array  # representative of each fault
    fresh: I64Array  # level of the first empty entry on the path (0: none)
    table: dict[int, I64Array]  # table visited at each level (1: the level-1 table)


@dataclass(frozen=True, slots=True)
class _Run:
    """The faults of one vectorised run (a prefix of the window)."""

    gfn: U64Array
    goal: I64Array
    maps: BoolArray
    noslot: BoolArray
    sidx: I64Array


def _walk_upper(
    state: VmState, gfn: U64Array, goal: I64Array, maps: BoolArray, simple: BoolArray, root: int
) -> tuple[BoolArray, I64Array, dict[int, I64Array], I64Array, BoolArray]:
    """The walk from the root down to level 2 for one representative per path key.

    Returns which are still simple, the level of the first empty entry (0: none),
    the table visited at each level, the level-1 table reached, and whether the
    walk reached it.
    """
    pool = state.pool
    entries = pool.entries
    base_mask = U64(state.host.spte_base_addr_mask)
    bits = U64(state.gfn_direct_bits)
    r = len(gfn)
    cur = np.full(r, root, dtype=np.int64)
    fresh = np.zeros(r, dtype=np.int64)
    table_at: dict[int, I64Array] = {}
    walking = simple.copy()
    for level in range(state.root_level, 1, -1):
        idx = ((gfn | bits) >> U64(9 * (level - 1))) & U64(511)
        table_at[level] = cur.copy()
        act = np.flatnonzero(walking)
        if len(act) == 0:
            break
        e = entries[cur[act], idx[act].astype(np.int64)]
        present = (e & U64(SPTE_MMU_PRESENT_MASK)) != U64(0)
        large = (e & U64(PT_PAGE_SIZE_MASK)) != U64(0)
        empty = e == U64(SHADOW_NONPRESENT_VALUE)
        at_goal = goal[act] == level
        is_map = maps[act]
        # A present leaf on the path could make the fast path fire; the target of a
        # mapping fault must be empty, and so must any non-table entry above it.
        simple[act[present & large]] = False
        simple[act[is_map & at_goal & ~empty]] = False
        simple[act[is_map & ~at_goal & ~present & ~empty]] = False
        fresh[act[~at_goal & empty & is_map]] = level
        descend = present & ~large & ~(at_goal & is_map)
        go = act[descend]
        if len(go):
            child_pfn = (e[descend] & base_mask) >> U64(12)
            cur[go] = pool.slot_of_serial[child_pfn.astype(np.int64) - TABLE_PFN_BASE]
        walking[act[~descend]] = False
    return simple, fresh, table_at, cur, walking


def _new_tables(
    state: VmState, run: _Run, walk: _RepWalk, in_run: I64Array
) -> tuple[U64Array, I64Array] | None:
    """Allocate and link the tables the run needs, in sequential allocation order.

    Returns (sorted table keys `gfn >> 9*level << 3 | level`, their slots), or
    None when the VM's table limit would be exceeded.
    """
    pool = state.pool
    reps = walk.reps[in_run]
    fresh = walk.fresh[in_run]
    goal, maps, gfn = run.goal[reps], run.maps[reps], run.gfn[reps]
    pair_rep: list[I64Array] = []
    pair_level: list[I64Array] = []
    for level in range(state.root_level - 1, 0, -1):
        need = np.flatnonzero(maps & (fresh > level) & (goal <= level))
        pair_rep.append(need)
        pair_level.append(np.full(len(need), level, dtype=np.int64))
    which = np.concatenate(pair_rep)
    levels = np.concatenate(pair_level)
    if len(which) == 0:
        if pool.live + state.root_level > pool.max_tables:
            return None
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    order = np.lexsort((-levels, reps[which]))
    which, levels = which[order], levels[order]
    keys = gfn[which] >> (U64(9) * levels.astype(np.uint64))
    combo = (keys << U64(3)) | levels.astype(np.uint64)
    _, first = np.unique(combo, return_index=True)
    first.sort()
    which, levels, keys, combo = which[first], levels[first], keys[first], combo[first]
    # Each fault of the run passes mmu_topup_memory_caches, which wants a full walk's
    # worth of tables free; with less headroom the scalar path decides fault by fault.
    if pool.live + len(which) + state.root_level > pool.max_tables:
        return None
    table_gfns = keys << (U64(9) * levels.astype(np.uint64))
    new_slots = pool.alloc_many(levels.astype(np.int8), table_gfns, TREE_DIRECT)
    by_combo = np.argsort(combo)
    sorted_combo, sorted_slots = combo[by_combo], new_slots[by_combo]
    # Link each new table into its parent: a new table one level up, or the existing
    # table where the walk met the empty entry.
    parent_level = levels + 1
    from_walk = parent_level == fresh[which]
    parents = np.empty(len(which), dtype=np.int64)
    for level in np.unique(parent_level[from_walk]).tolist():
        sel = from_walk & (parent_level == level)
        parents[sel] = walk.table[level][in_run[which[sel]]]
    inner = ~from_walk
    if inner.any():
        pkeys = gfn[which[inner]] >> (U64(9) * parent_level[inner].astype(np.uint64))
        pcombo = (pkeys << U64(3)) | parent_level[inner].astype(np.uint64)
        parents[inner] = sorted_slots[np.searchsorted(sorted_combo, pcombo)]
    bits = U64(state.gfn_direct_bits)
    index = ((gfn[which] | bits) >> (U64(9) * levels.astype(np.uint64))) & U64(511)
    nonleaf = U64(_nonleaf_base(state)) | pool.pa_many(new_slots)
    pool.entries[parents, index.astype(np.int64)] = nonleaf
    return sorted_combo, sorted_slots


def _apply(state: VmState, run: _Run, walk: _RepWalk, slots: _Slots, out: _Out, pos: int) -> int:
    host = state.host
    pool = state.pool
    gfn, goal, maps, noslot, sidx = run.gfn, run.goal, run.maps, run.noslot, run.sidx
    k = len(gfn)
    in_run = np.flatnonzero(walk.reps < k)
    tables = _new_tables(state, run, walk, in_run)
    if tables is None:
        return 0  # let the scalar path report ENOMEM fault by fault
    new_combo, new_slots = tables

    # Target table of each representative's leaf, then of each fault.
    reps = walk.reps[in_run]
    r_goal = goal[reps]
    r_fresh = walk.fresh[in_run]
    target_rep = np.zeros(len(walk.reps), dtype=np.int64)
    fresh_sel = r_fresh > 0
    if fresh_sel.any():
        tg = r_goal[fresh_sel].astype(np.uint64)
        tcombo = ((gfn[reps[fresh_sel]] >> (U64(9) * tg)) << U64(3)) | tg
        target_rep[in_run[fresh_sel]] = new_slots[np.searchsorted(new_combo, tcombo)]
    for level in np.unique(r_goal[~fresh_sel]).tolist():
        sel = ~fresh_sel & (r_goal == level)
        target_rep[in_run[sel]] = walk.table[level][in_run[sel]]
    map_idx = np.flatnonzero(maps)
    target = target_rep[walk.inv[map_idx]]

    # Leaves.
    values = np.zeros(k, dtype=np.uint64)
    slot_maps = maps & ~noslot
    mmio_maps = maps & noslot
    if mmio_maps.any():
        values[mmio_maps] = make_mmio_spte_batch(
            state, gfn[mmio_maps], host.layout.acc_all, state.generation
        )
    for level in (1, 2, 3):
        sel = slot_maps & (goal == level)
        if not sel.any():
            continue
        s = sidx[sel]
        pfn = slots.pfn[s] + (gfn[sel] - slots.base[s])
        if level > 1:
            pfn &= ~U64((1 << (9 * (level - 1))) - 1)
        readonly = slots.readonly[s]
        leaf, _ = make_spte_batch(
            host,
            level=level,
            pte_access=state.root_access,
            pfns=pfn,
            host_writable=~readonly if readonly.any() else True,
            ad_disabled=not host.kvm_ad_enabled,
            mt_bits=state.mt_bits,
        )
        values[sel] = leaf
        state.stats.add_pages(level, int(sel.sum()))
    shift = U64(9) * (goal[map_idx] - 1).astype(np.uint64)
    leaf_index = ((gfn[map_idx] | U64(state.gfn_direct_bits)) >> shift) & U64(511)
    pool.entries[target, leaf_index.astype(np.int64)] = values[map_idx]

    # Dirty bitmaps of logging slots.
    if slots.log_dirty.any():
        dirty = slot_maps & ((values & U64(PT_WRITABLE_MASK)) != U64(0))
        d = np.flatnonzero(dirty)
        d = d[slots.log_dirty[sidx[d]]]
        for fault in d.tolist():
            slots.states[int(sidx[fault])].mark_dirty(int(gfn[fault]))

    # Results and statistics.
    sl = slice(pos, pos + k)
    out.gfns[sl] = gfn
    out.outcomes[sl] = np.where(slot_maps, FIXED, EMULATE)
    out.sptes[sl] = values
    out.levels[sl] = np.where(maps, goal, 0)
    out.vectorised += k
    stats = state.stats
    stats.pf_taken += k
    fixed = int(slot_maps.sum())
    stats.pf_fixed += fixed
    stats.pf_emulate += k - fixed
    stats.pf_mmio_spte_created += int(mmio_maps.sum())
    noslot_idx = np.flatnonzero(noslot)
    gen = state.generation
    if len(noslot_idx) and not gen & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
        last = int(noslot_idx[-1])
        access = host.layout.acc_all & host.shadow_mmio_access_mask
        state.mmio_cache = MmioCache(int(gfn[last]), access, gen)
    return k


def _nonleaf_base(state: VmState) -> int:
    host = state.host
    base = (
        SPTE_MMU_PRESENT_MASK
        | host.shadow_present_mask
        | PT_WRITABLE_MASK
        | PT_PRESENT_MASK
        | host.shadow_user_mask
        | host.shadow_x_mask
        | host.shadow_xu_mask
        | host.shadow_me_value
    )
    return base | (
        host.layout.ad_disabled if not host.kvm_ad_enabled else host.shadow_accessed_mask
    )


__all__ = ["PFERR_PRESENT_MASK", "BatchResult", "run_batch"]
