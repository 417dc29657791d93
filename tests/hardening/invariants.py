"""Model invariants of every VM, checked after fuzzing and load.

Two views of the same rules:
- `check_registry` looks inside an in-process server's registry: it walks each
  VM's page tables from its roots and compares what it reaches with the table
  pool, the stats and the memslots.
- `check_over_api` sees only what a client sees (GetVm, GetVmStats,
  StreamSptes with non-leaf entries), for a server in another process.

The rules: every live table is reached from a root exactly once, at the right
level, tree and GFN (every SPTE reachable, no leaked or shared tables); no
frozen SPTE outlives an operation; pages_4k/2m/1g equal the present leaves
per level; nx_lpage_splits equals the tables on the possible-NX list; the
table counts equal the tables reached; every present leaf maps a GFN some
memslot covers; and pf_fixed + pf_emulate + pf_spurious <= pf_taken.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

from kvmmu.v1 import common_pb2, service_pb2_grpc, spte_pb2, vm_pb2
from mmu.constants import (
    PG_LEVEL_4K,
    PT_PAGE_SIZE_MASK,
    SHADOW_NONPRESENT_VALUE,
    SPTE_MMU_PRESENT_MASK,
)
from mmu.pool import TREE_DIRECT, TREE_MIRROR
from mmu.profiles import host_from_profile
from mmu.state import VmState
from server.registry import Registry

LEAF_STATS = {1: "pages_4k", 2: "pages_2m", 3: "pages_1g"}


@dataclass
class Report:
    """What a check looked at, and every violation it found."""

    vms: int = 0
    tables: int = 0
    leaves: int = 0
    problems: list[str] = field(default_factory=list)

    def fail(self, vm: str, message: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(f"{vm}: {message}")

    def assert_ok(self) -> None:
        assert not self.problems, "model invariants violated:\n" + "\n".join(self.problems)


def _is_leaf(spte: int, level: int) -> bool:
    return bool(spte & SPTE_MMU_PRESENT_MASK) and (
        level == PG_LEVEL_4K or bool(spte & PT_PAGE_SIZE_MASK)
    )


def _check_fault_stats(report: Report, name: str, stats: dict[str, int]) -> None:
    outcomes = stats["pf_fixed"] + stats["pf_emulate"] + stats["pf_spurious"]
    if outcomes > stats["pf_taken"]:
        report.fail(name, f"pf_fixed+pf_emulate+pf_spurious {outcomes} > pf_taken {stats}")


# --- inside the model -------------------------------------------------------------


def check_registry(registry: Registry) -> Report:
    """Check every VM of an in-process registry under its lock."""
    report = Report()
    for entry in registry.entries():
        with entry.lock:
            if entry.deleted:
                continue
            report.vms += 1
            _check_state(report, entry.vm.id, entry.vm.state, entry.vm.tables())
    return report


def _walk(report: Report, name: str, state: VmState) -> tuple[dict[int, int], Counter[int], int]:
    """Tables reached from the roots (slot -> tree), present leaves per level, NX-listed."""
    pool = state.pool
    frozen = state.host.layout.frozen_spte
    reached: dict[int, int] = {}
    leaves: Counter[int] = Counter()
    listed = 0
    for tree, root in state.roots():
        if int(pool.level[root]) != state.root_level or int(pool.tree[root]) != tree:
            report.fail(name, f"root {root} of tree {tree} has level {pool.level[root]}")
        todo = [root]
        while todo:
            slot = todo.pop()
            if slot in reached:
                report.fail(name, f"table {slot} is linked twice")
                continue
            reached[slot] = tree
            listed += int(bool(pool.nx_listed[slot]))
            level = int(pool.level[slot])
            span = 1 << (9 * (level - 1))
            for index, spte in enumerate(pool.entries[slot].tolist()):
                if spte == SHADOW_NONPRESENT_VALUE:
                    continue
                if spte == frozen:
                    report.fail(name, f"frozen SPTE left in table {slot}[{index}]")
                elif _is_leaf(spte, level):
                    leaves[level] += 1
                    _check_backed(report, name, state, int(pool.gfn[slot]) + index * span, tree)
                elif spte & SPTE_MMU_PRESENT_MASK:
                    child = state.child_slot(spte)
                    _check_child(report, name, state, slot, index, child, tree)
                    todo.append(child)
    return reached, leaves, listed


def _check_child(
    report: Report, name: str, state: VmState, parent: int, index: int, child: int, tree: int
) -> None:
    pool = state.pool
    level = int(pool.level[parent])
    span = 1 << (9 * (level - 1))
    if child < 0 or int(pool.tree[child]) != tree:
        report.fail(name, f"table {parent}[{index}] points to a free table ({child})")
    elif int(pool.level[child]) != level - 1:
        report.fail(name, f"table {child} under level {level} has level {pool.level[child]}")
    else:
        # sp->gfn never holds the TDX shared bit, although the direct root's shared
        # half is indexed by it (spec 8.1, 8.2).
        shared_bit = state.gfn_direct_bits if tree == TREE_DIRECT else 0
        mapped = (int(pool.gfn[parent]) + index * span) & ~shared_bit
        if int(pool.gfn[child]) != mapped:
            report.fail(name, f"table {child} has gfn {pool.gfn[child]:#x}, its parent entry "
                        f"maps {mapped:#x}")  # fmt: skip


def _check_backed(report: Report, name: str, state: VmState, gfn: int, tree: int) -> None:
    if tree == TREE_DIRECT:
        gfn &= ~state.gfn_direct_bits
    if not any(s.slot.contains(gfn) for s in state.memslots.states()):
        report.fail(name, f"a present leaf maps gfn {gfn:#x}, which no memslot covers")


def _check_state(report: Report, name: str, state: VmState, tables: dict[str, int]) -> None:
    reached, leaves, listed = _walk(report, name, state)
    live = set(state.pool.live_slots().tolist())
    if live != set(reached):
        leaked = sorted(live - set(reached))[:8]
        report.fail(name, f"{len(live - set(reached))} live tables unreachable: {leaked}")
    if state.pool.live != len(live):
        report.fail(name, f"pool.live {state.pool.live} != {len(live)} live tables")
    trees = Counter(reached.values())
    if tables != {"direct": trees[TREE_DIRECT], "mirror": trees[TREE_MIRROR]}:
        report.fail(name, f"tables() {tables} != reached {dict(trees)}")
    stats = state.stats.as_dict()
    for level, stat in LEAF_STATS.items():
        if stats[stat] != leaves[level]:
            report.fail(name, f"{stat} = {stats[stat]} but {leaves[level]} present leaves")
    if stats["nx_lpage_splits"] != listed:
        report.fail(name, f"nx_lpage_splits {stats['nx_lpage_splits']} != {listed} listed")
    _check_fault_stats(report, name, stats)
    report.tables += len(reached)
    report.leaves += sum(leaves.values())


# --- through the API --------------------------------------------------------------


def check_over_api(channel: grpc.Channel, profile: str, metadata: tuple = ()) -> Report:  # type: ignore[type-arg]
    """Check every VM of a server through its public API."""
    stub = service_pb2_grpc.MmuServiceStub(channel)
    frozen = host_from_profile(profile).layout.frozen_spte
    report = Report()
    token = ""
    while True:
        page = stub.ListVms(
            vm_pb2.ListVmsRequest(page_size=100, page_token=token, view=vm_pb2.VM_VIEW_FULL),
            metadata=metadata,
        )
        for vm in page.vms:
            report.vms += 1
            _check_vm_over_api(report, stub, vm, frozen, metadata)
        token = page.next_page_token
        if not token:
            return report


def _check_vm_over_api(
    report: Report,
    stub: service_pb2_grpc.MmuServiceStub,
    vm: vm_pb2.Vm,
    frozen: int,
    metadata: tuple,  # type: ignore[type-arg]
) -> None:
    name = vm.name
    chunks = list(
        stub.StreamSptes(
            spte_pb2.StreamSptesRequest(name=name, include_non_leaf=True), metadata=metadata
        )
    )
    stats = stub.GetVmStats(vm_pb2.GetVmStatsRequest(name=f"{name}/stats"), metadata=metadata)
    roots = np.asarray([r for c in chunks for r in c.roots], dtype=np.int64)
    gfns = np.asarray([g for c in chunks for g in c.gfns], dtype=np.uint64)
    levels = np.asarray([lv for c in chunks for lv in c.levels], dtype=np.int64)
    values = np.asarray([v for c in chunks for v in c.values], dtype=np.uint64)
    present = (values & np.uint64(SPTE_MMU_PRESENT_MASK)) != 0
    large = (values & np.uint64(PT_PAGE_SIZE_MASK)) != 0
    leaf = present & ((levels == PG_LEVEL_4K) | large)
    nonleaf = present & ~leaf
    if (values == np.uint64(frozen)).any():
        report.fail(name, "a frozen SPTE is left in the tables")
    for level, stat in LEAF_STATS.items():
        count = int((leaf & (levels == level)).sum())
        if getattr(stats, stat) != count:
            report.fail(name, f"{stat} = {getattr(stats, stat)} but {count} present leaves")
    pointers = values[nonleaf] & np.uint64(0x000FFFFFFFFFF000)
    if len(np.unique(pointers)) != len(pointers):
        report.fail(name, "a table is linked twice")
    for root, tables in (
        (common_pb2.TDP_ROOT_DIRECT, stats.direct_tables),
        (common_pb2.TDP_ROOT_MIRROR, stats.mirror_tables),
    ):
        linked = int((nonleaf & (roots == root)).sum())
        if tables != (linked + 1 if tables else 0):
            report.fail(name, f"root {root}: {tables} tables but {linked} non-leaf SPTEs")
    # Every entry below the root is reached: a present non-leaf SPTE one level up maps it.
    parents = {
        (int(r), int(g), int(lv))
        for r, g, lv in zip(roots[nonleaf], gfns[nonleaf], levels[nonleaf], strict=True)
    }
    for r, g, lv in zip(roots.tolist(), gfns.tolist(), levels.tolist(), strict=True):
        if lv < vm.tdp_root_level:
            covering = g & ~((1 << (9 * lv)) - 1)
            if (r, covering, lv + 1) not in parents:
                report.fail(name, f"entry at gfn {g:#x} level {lv} is not reachable")
                break
    if stats.nx_lpage_splits > max(stats.direct_tables + stats.mirror_tables - 1, 0):
        report.fail(name, f"nx_lpage_splits {stats.nx_lpage_splits} > non-root tables")
    _check_fault_stats(
        report,
        name,
        {k: getattr(stats, k) for k in ("pf_taken", "pf_fixed", "pf_emulate", "pf_spurious")},
    )
    report.tables += stats.direct_tables + stats.mirror_tables
    report.leaves += int(leaf.sum())
