"""TDP MMU speed and memory, in process.

Workload (issue #4): one VM, one 4 GiB memslot with 4K host backing,
1,048,576 write faults through the batch path, then a full dump, then zap
all; single faults and tracing cost separately. Baselines measured in the
same run: a numpy scatter of 1M uint64 values into 512-entry tables (the
floor for any vectorised fault path) and a numpy copy of the table memory
(the floor for a dump).

Prints a readable summary and, as its last line, one JSON object.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import emit, human, median_seconds, rate
from mmu.decode import decode_spte
from mmu.memslots import Memslot
from mmu.profiles import host_from_profile
from mmu.vm import Vm

PAGES = 1 << 20  # 4 GiB of 4K pages
BASE_GFN = 0x100000
WRITE = 0x2
REPEAT = 5


def new_vm(tracing: bool = False) -> Vm:
    vm = Vm(host_from_profile("intel-ept"), tracing=tracing, event_history=1 << 22)
    vm.create_memslot(
        Memslot(
            0,
            base_gfn=BASE_GFN,
            npages=PAGES,
            userspace_addr=0x7F0000000000 + (BASE_GFN << 12),
            host_pfn_base=0x2000000 + BASE_GFN,
        )
    )
    return vm


def mappings() -> list[tuple[int, int, int]]:
    """(start, end, resident bytes) of every mapping, from /proc/self/smaps."""
    out: list[tuple[int, int, int]] = []
    start = end = 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = head.split("-")
            start, end = int(lo, 16), int(hi, 16)
        elif head == "Rss:":
            out.append((start, end, int(line.split()[1]) * 1024))
    return out


def table_bytes(vm: Vm) -> int:
    """Resident memory of the mappings the VM's page tables live in (each counted once:
    the kernel merges adjacent anonymous mappings into one)."""
    pool = vm.state.pool
    arrays = [
        pool.entries,
        pool.level,
        pool.gfn,
        pool.serial,
        pool.tree,
        pool.nx_disallowed,
        pool.nx_listed,
        pool.slot_of_serial,
    ]
    addresses = [a.ctypes.data for a in arrays]
    return sum(
        rss for lo, hi, rss in mappings() if any(lo <= address < hi for address in addresses)
    )


def main() -> None:
    gpas = (np.arange(PAGES, dtype=np.uint64) + np.uint64(BASE_GFN)) << np.uint64(12)

    # Floors: scatter 1M values into tables, and copy the table memory.
    tables = np.zeros((PAGES // 512, 512), dtype=np.uint64)
    rows = np.arange(PAGES, dtype=np.int64) >> 9
    cols = np.arange(PAGES, dtype=np.int64) & 511
    t_scatter = median_seconds(lambda: tables.__setitem__((rows, cols), gpas), REPEAT)
    t_copy = median_seconds(tables.copy, REPEAT)

    batch_times, dump_times, zap_times, vectorised = [], [], [], 0
    bytes_per_page = 0.0
    for _ in range(REPEAT):
        vm = new_vm()
        gc.collect()
        start = time.perf_counter()
        result = vm.fault_batch(gpas, WRITE)
        batch_times.append(time.perf_counter() - start)
        vectorised = result.vectorised
        assert vm.stats()["pages_4k"] == PAGES
        bytes_per_page = table_bytes(vm) / PAGES
        start = time.perf_counter()
        dump = vm.dump()
        dump_times.append(time.perf_counter() - start)
        assert len(dump) == PAGES
        start = time.perf_counter()
        zapped = vm.zap_all_fast()
        zap_times.append(time.perf_counter() - start)
        assert vm.stats()["pages_4k"] == 0 and zapped.spte_changes > PAGES
        del vm, dump
        gc.collect()

    # Per-SPTE decoded view: a streamed sample.
    vm = new_vm()
    vm.fault_batch(gpas, WRITE)
    dump = vm.dump()
    sample = 100_000
    start = time.perf_counter()
    for value in dump.values[:sample].tolist():
        decode_spte(vm, value, 1)
    t_decode = time.perf_counter() - start

    # Re-faults on mapped memory: every fault is spurious and takes the scalar path.
    refault_n = 65_536
    start = time.perf_counter()
    refaults = vm.fault_batch(gpas[:refault_n], WRITE)
    refault_rate = refault_n / (time.perf_counter() - start)
    assert refaults.vectorised == 0

    # Single faults.
    single_n = 100_000
    single_rates = []
    for _ in range(3):
        vm = new_vm()
        addrs = gpas[:single_n].tolist()
        start = time.perf_counter()
        for gpa in addrs:
            vm.fault(gpa, WRITE)
        single_rates.append(single_n / (time.perf_counter() - start))

    # Tracing on: every fault recorded as events (the scalar path).
    traced_n = 65_536
    vm = new_vm(tracing=True)
    start = time.perf_counter()
    vm.fault_batch(gpas[:traced_n], WRITE)
    traced_rate = traced_n / (time.perf_counter() - start)
    events_per_fault = (vm.next_event_seq - 1) / traced_n

    figures = {
        "pages": PAGES,
        "batch_faults_per_s": rate(PAGES, statistics.median(batch_times)),
        "batch_vectorised_fraction": vectorised / PAGES,
        "single_faults_per_s": statistics.median(single_rates),
        "dump_sptes_per_s": rate(PAGES, statistics.median(dump_times)),
        "decoded_sptes_per_s": rate(sample, t_decode),
        "zap_all_seconds": statistics.median(zap_times),
        "bytes_per_page": bytes_per_page,
        "spurious_batch_faults_per_s": refault_rate,
        "traced_batch_faults_per_s": traced_rate,
        "events_per_traced_fault": events_per_fault,
        "floor_scatter_per_s": rate(PAGES, t_scatter),
        "floor_copy_entries_per_s": rate(PAGES, t_copy),
    }
    print(
        f"TDP MMU, {PAGES:,} 4K write faults into one 4 GiB slot (intel-ept), medians of {REPEAT}"
    )
    print(
        f"  batch faults          {human(figures['batch_faults_per_s'])}/s "
        f"({figures['batch_vectorised_fraction']:.0%} vectorised); "
        f"floor (numpy scatter) {human(figures['floor_scatter_per_s'])}/s"
    )
    print(f"  single faults         {human(figures['single_faults_per_s'])}/s")
    print(f"  batch re-faults       {human(refault_rate)}/s (spurious: mapped memory, scalar path)")
    print(
        f"  dump as arrays        {human(figures['dump_sptes_per_s'])} SPTEs/s; "
        f"floor (numpy copy) {human(figures['floor_copy_entries_per_s'])}/s"
    )
    print(f"  decoded dump          {human(figures['decoded_sptes_per_s'])} SPTEs/s")
    print(f"  zap all (fast zap)    {figures['zap_all_seconds'] * 1000:.1f} ms")
    print(f"  table memory          {figures['bytes_per_page']:.2f} bytes per mapped 4K page")
    print(
        f"  tracing on            {human(traced_rate)} faults/s, "
        f"{events_per_fault:.1f} events per fault"
    )
    emit(figures)


if __name__ == "__main__":
    main()
