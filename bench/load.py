"""Mixed-workload throughput and latency at 1, 8 and 32 concurrent clients.

Each level gets a fresh kvmmu-server subprocess on loopback, a shared VM
with one memslot per client, and N clients (threads of this process, each
with its own channel) running bench._workload.Worker for --seconds: faults
and batches (8..512 GPAs), memslot changes, zaps, aging, dirty logs, MMIO
values, attributes, followers, and every read (GetVm, List*, StreamSptes,
DecodeSpte, WatchEvents, health). Throughput and latency count every call
but the followers (WatchEvents with follow, which wait 50 ms by design);
latency is end to end per call, p50 and p99 over all of them. The clients share this
process (one GIL), so on a small machine they compete with the server.

Prints a readable summary and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import emit, start_server
from bench._workload import FOLLOW, Worker, set_up_shared
from kvmmu.v1 import service_pb2_grpc

LEVELS = (1, 8, 32)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def level(clients: int, seconds: float) -> dict[str, float]:
    proc, port = start_server("--max-vms", "100", "--workers", "48")
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            set_up_shared(service_pb2_grpc.MmuServiceStub(channel), clients)
        workers = [
            Worker(i, grpc.insecure_channel(target), seed=7, record=False) for i in range(clients)
        ]
        threads = [threading.Thread(target=w.run, args=(seconds,)) for w in workers]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        for worker in workers:
            worker.channel.close()
    finally:
        proc.terminate()
        proc.wait(30)
    latencies = [x for w in workers for method, x in w.latencies if method != FOLLOW]
    errors = [u for w in workers for u in w.unexpected]
    return {
        "calls": len(latencies),
        "calls_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
        "unexpected_errors": len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="run time per level")
    args = parser.parse_args()
    figures: dict[str, float] = {"seconds_per_level": args.seconds}
    for clients in LEVELS:
        result = level(clients, args.seconds)
        print(
            f"{clients:3d} clients  {result['calls_per_s']:9.1f} calls/s   "
            f"p50 {result['p50_ms']:8.3f} ms   p99 {result['p99_ms']:9.3f} ms   "
            f"({result['calls']} calls, {result['unexpected_errors']} unexpected errors)",
            flush=True,
        )
        for key, value in result.items():
            figures[f"clients_{clients}_{key}"] = value
    emit(figures)


if __name__ == "__main__":
    main()
