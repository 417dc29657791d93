"""RPC speed against a real kvmmu-server subprocess on loopback.

1. Unary latency: a health Check (the floor for any unary call here) and a
   unary Fault (a write fault mapping a fresh 4K page, with its events),
   alternated so both see the same machine state; medians and their ratio.
2. BatchFault: the 4 GiB workload (one memslot of 1,048,576 4K pages with 4K
   host backing), write faults, 4,096 GPAs per call, end to end.
3. StreamSptes: a dump of those 1,048,576 leaf SPTEs, received by the client
   as numpy arrays (packed repeated fields in large chunks).

Prints a readable summary and, as its last line, one JSON object.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import emit, human, rate, start_server
from kvmmu.v1 import fault_pb2, memslot_pb2, service_pb2_grpc, spte_pb2, vm_pb2

PAGES = 1 << 20  # 4 GiB of 4K pages
BASE_GFN = 0x100000
WRITE = 0x2
BATCH = 4096
UNARY = 2000
CHUNK = 1 << 17


def memslot(pages: int) -> memslot_pb2.Memslot:
    return memslot_pb2.Memslot(
        slot=0,
        guest_phys_addr=BASE_GFN << 12,
        memory_size=pages << 12,
        userspace_addr=0x7F0000000000 + (BASE_GFN << 12),
        host_pfn_base=0x2000000 + BASE_GFN,
    )


def new_vm(stub: service_pb2_grpc.MmuServiceStub, vm_id: str, pages: int) -> str:
    stub.CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id))
    stub.SetMemslot(memslot_pb2.SetMemslotRequest(parent=f"vms/{vm_id}", memslot=memslot(pages)))
    return f"vms/{vm_id}"


def unary(channel: grpc.Channel, stub: service_pb2_grpc.MmuServiceStub) -> dict[str, float]:
    health = health_pb2_grpc.HealthStub(channel)
    name = new_vm(stub, "unary", PAGES)
    check = health_pb2.HealthCheckRequest()
    health_times, fault_times = [], []
    for i in range(UNARY + 200):
        request = fault_pb2.FaultRequest(name=name, gpa=(BASE_GFN + i) << 12, error_code=WRITE)
        t0 = time.perf_counter()
        health.Check(check)
        t1 = time.perf_counter()
        stub.Fault(request)
        t2 = time.perf_counter()
        if i >= 200:  # warm-up done
            health_times.append(t1 - t0)
            fault_times.append(t2 - t1)
    h, f = statistics.median(health_times), statistics.median(fault_times)
    return {"health_check_median_us": h * 1e6, "unary_fault_median_us": f * 1e6, "ratio": f / h}


def batch(stub: service_pb2_grpc.MmuServiceStub) -> tuple[str, float]:
    name = new_vm(stub, "batch", PAGES)
    gpas = (np.arange(PAGES, dtype=np.uint64) + np.uint64(BASE_GFN)) << np.uint64(12)
    fixed = 0
    start = time.perf_counter()  # end to end: numpy in, request built, response decoded
    for i in range(0, PAGES, BATCH):
        request = fault_pb2.BatchFaultRequest(
            name=name, gpas=gpas[i : i + BATCH].tolist(), shared_error_code=WRITE
        )
        response = stub.BatchFault(request)
        fixed += np.count_nonzero(np.array(response.outcomes, dtype=np.int8) == 5)
    seconds = time.perf_counter() - start
    assert fixed == PAGES, fixed
    return name, seconds


def dump(stub: service_pb2_grpc.MmuServiceStub, name: str) -> tuple[int, float]:
    request = spte_pb2.StreamSptesRequest(name=name, chunk_size=CHUNK)
    start = time.perf_counter()
    parts: list[tuple[np.ndarray, ...]] = []
    for chunk in stub.StreamSptes(request):
        parts.append(
            (
                np.array(chunk.gfns, dtype=np.uint64),
                np.array(chunk.levels, dtype=np.uint8),
                np.array(chunk.values, dtype=np.uint64),
                np.array(chunk.roots, dtype=np.uint8),
            )
        )
    values = np.concatenate([p[2] for p in parts])
    seconds = time.perf_counter() - start
    return len(values), seconds


def main() -> None:
    proc, port = start_server()
    try:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = service_pb2_grpc.MmuServiceStub(channel)
            lat = unary(channel, stub)
            name, batch_s = batch(stub)
            count, dump_s = dump(stub, name)
    finally:
        proc.terminate()
        proc.wait(30)
    batch_rate = rate(PAGES, batch_s)
    dump_rate = rate(count, dump_s)
    print(f"health Check median      {lat['health_check_median_us']:8.1f} us")
    print(f"unary Fault median       {lat['unary_fault_median_us']:8.1f} us")
    print(f"  ratio Fault / Check    {lat['ratio']:8.2f}   (target <= 1.3)")
    print(f"BatchFault x{BATCH}        {human(batch_rate)} faults/s   (target >= 2M/s)")
    print(f"  1,048,576 faults in    {batch_s:8.3f} s")
    print(f"StreamSptes dump         {human(dump_rate)} SPTEs/s    (target >= 5M/s)")
    print(f"  {count:,} SPTEs in    {dump_s:8.3f} s")
    emit(
        {
            "health_check_median_us": round(lat["health_check_median_us"], 1),
            "unary_fault_median_us": round(lat["unary_fault_median_us"], 1),
            "unary_fault_over_health_ratio": round(lat["ratio"], 3),
            "batch_faults_per_s": round(batch_rate),
            "batch_size": BATCH,
            "dump_sptes_per_s": round(dump_rate),
            "dump_sptes": count,
        }
    )


if __name__ == "__main__":
    main()
