"""The durable store in process: records, group commit, levels, rejected and failed ops,
a failing disk, snapshot triggers, and checkpoints taken while VMs change."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvmmu.v1 import vm_pb2
from mmu.errors import ModelError
from mmu.memslots import Memslot
from mmu.vm import Vm
from server import ops
from server.apply import apply
from server.durability.codec import Record, decode, encode
from server.durability.config import DurabilityConfig
from server.durability.errors import CorruptState, StoreFailed
from server.durability.store import Store, open_store
from server.main import build_parser, config_from_args
from server.registry import Registry
from server.status import status_for
from tests.server.durable_model import fresh_registry, model_fingerprint
from tests.server.durable_state import (
    HOST_RECORD,
    NO_TRIGGERS,
    PHASE1,
    PHASE2,
    abandon,
    run_ops,
    server_losing_its_disk,
)

pytestmark = pytest.mark.timeout(60)


def open_(state: Path, config: DurabilityConfig = NO_TRIGGERS) -> tuple[Registry, Store]:
    registry = fresh_registry()
    store = open_store(state, config, registry, HOST_RECORD)
    assert store is not None
    return registry, store


def reopen(state: Path) -> Registry:
    registry, store = open_(state)
    abandon(store)
    return registry


def same(a: Registry, b: Registry) -> None:
    assert a.ids() == b.ids()
    for vm_id in a.ids():
        assert model_fingerprint(a, vm_id) == model_fingerprint(b, vm_id), vm_id


@pytest.mark.parametrize("op", PHASE1 + PHASE2, ids=lambda op: op.name)
def test_records_round_trip(op: ops.Op[Any]) -> None:
    record = Record(op, "KvmBug", 7) if isinstance(op, ops.CreateVm) else Record(op)
    back = decode(encode(record))
    assert (back.failed, back.max_tables) == (record.failed, record.max_tables)
    assert ops.op_to_dict(back.op) == ops.op_to_dict(op)


def test_batch_fault_records_are_raw_arrays() -> None:
    gpas = np.arange(4096, dtype=np.uint64) << np.uint64(12)
    shared = encode(Record(ops.BatchFault("a", gpas=gpas, shared_error_code=2)))
    codes = encode(Record(ops.BatchFault("a", gpas=gpas, error_codes=gpas & np.uint64(7))))
    assert 8 * 4096 < len(shared) < 8 * 4096 + 200
    assert 16 * 4096 < len(codes) < 16 * 4096 + 200


@pytest.mark.parametrize(("level", "synchronous"), [("process", 1), ("power", 2)])
def test_levels_set_sqlite_synchronous(tmp_path: Path, level: str, synchronous: int) -> None:
    _, store = open_(tmp_path / "s", DurabilityConfig(level=level))  # type: ignore[arg-type]
    try:
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_group_commit_shares_one_sync_among_concurrent_writers(tmp_path: Path) -> None:
    registry, store = open_(tmp_path / "s", DurabilityConfig(level="power", snapshot_records=0))
    threads, per_thread = 8, 25
    for i in range(threads):
        apply(registry, ops.CreateVm(f"v{i}"))
        apply(registry, ops.SetMemslot(f"v{i}", slot=Memslot(0, 0, 1 << 16)))
    before = store.journal.stats.records, store.journal.stats.commits
    start = threading.Barrier(threads)

    def writer(i: int) -> None:
        start.wait()
        for n in range(per_thread):
            apply(registry, ops.Fault(f"v{i}", gpa=n << 12, error_code=2))

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    records = store.journal.stats.records - before[0]
    commits = store.journal.stats.commits - before[1]
    assert records == threads * per_thread
    assert commits < records * 0.8, (commits, records)  # most commits carried several records
    abandon(store)
    same(reopen(tmp_path / "s"), registry)


def test_rejected_ops_are_not_journaled(tmp_path: Path) -> None:
    registry, store = open_(tmp_path / "s")
    run_ops(registry, PHASE1)
    records = store.journal.stats.records
    rejected: list[ops.Op[Any]] = [
        ops.Fault("a", gpa=1 << 60),
        ops.SetMemslot("a", slot=Memslot(0, 0x100000, 32)),  # a resize
        ops.CreateVm("a"),
        ops.DeleteMemslot("a", slot_id=9),
        ops.Zap("nope", kind="all"),
    ]
    for bad in rejected:
        with pytest.raises(ModelError):
            apply(registry, bad)
    assert store.journal.stats.records == records
    abandon(store)
    same(reopen(tmp_path / "s"), registry)


def test_an_op_failing_part_way_is_journaled_and_replays_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zap_all = Vm.zap_all_fast

    def zap_then_fail(vm: Vm) -> object:
        zap_all(vm)
        raise RuntimeError("failed after zapping")

    registry, store = open_(tmp_path / "s")
    run_ops(registry, PHASE1)
    monkeypatch.setattr(Vm, "zap_all_fast", zap_then_fail)
    with pytest.raises(RuntimeError):
        apply(registry, ops.Zap("a", kind="all"))
    apply(registry, ops.Fault("a", gpa=0x100000 << 12, error_code=2))
    abandon(store)
    same(reopen(tmp_path / "s"), registry)  # the replay failed at the same point
    monkeypatch.setattr(Vm, "zap_all_fast", zap_all)
    with pytest.raises(CorruptState, match="raised RuntimeError when it was journaled, now it"):
        reopen(tmp_path / "s")


def test_a_failing_store_refuses_every_later_change(tmp_path: Path) -> None:
    registry, store = open_(tmp_path / "s")
    run_ops(registry, PHASE1)
    store.db.close()  # the disk is gone
    with pytest.raises(StoreFailed) as first:
        apply(registry, ops.Fault("a", gpa=0x100000 << 12, error_code=2))
    with pytest.raises(StoreFailed):
        apply(registry, ops.Fault("b", gpa=0x1000, error_code=2))
    assert status_for(first.value, "Fault", None).code == code_pb2.UNAVAILABLE
    store.snapshotter.stop()
    store.lock.close()


def test_snapshots_follow_the_record_trigger(tmp_path: Path) -> None:
    config = DurabilityConfig(snapshot_records=10, snapshot_bytes=0, snapshot_seconds=0)
    registry, store = open_(tmp_path / "s", config)
    run_ops(registry, PHASE1 + PHASE2)
    deadline = time.monotonic() + 10
    while store.snapshotter.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.snapshotter.checkpoints >= 1
    count = store.db.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
    assert count < len(PHASE1 + PHASE2)
    abandon(store)
    same(reopen(tmp_path / "s"), registry)


def test_unchanged_vms_keep_their_snapshot_file(tmp_path: Path) -> None:
    registry, store = open_(tmp_path / "s")
    run_ops(registry, PHASE1)
    store.checkpoint()
    files = {row.vm_id: row.file for row in store.snapshotter.rows.values()}
    apply(registry, ops.Fault("a", gpa=0x100000 << 12 | 0x4000_0000, error_code=2))
    report = store.snapshotter.checkpoint()
    assert (report.taken, report.kept) == (1, 1)
    rows = store.snapshotter.rows
    assert rows["b"].file == files["b"] and rows["a"].file != files["a"]
    assert sorted(p.name for p in (tmp_path / "s" / "snapshots").iterdir()) == sorted(
        r.file for r in rows.values()
    )
    abandon(store)
    same(reopen(tmp_path / "s"), registry)


def test_checkpoints_while_vms_change_are_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots taken while other threads change, delete and re-create VMs: every record
    is either in a snapshot or in the journal tail, never both, never neither. Several
    rounds, each ending as a kill would and recovering from the directory."""
    interval = sys.getswitchinterval()
    monkeypatch.setattr(sys, "setswitchinterval", sys.setswitchinterval)  # restores it
    sys.setswitchinterval(1e-6)  # threads interleave inside the snapshot scan
    counters = [0] * 6
    registry, store = open_(tmp_path / "s")
    run_ops(registry, PHASE1)

    def churn(i: int, stop: threading.Event) -> None:
        vm_id = f"c{i}"
        while not stop.is_set():
            n = counters[i]
            if n % (50 if i % 2 else 3) == 0:  # long-lived VMs, and VMs re-created often
                if n:
                    apply(registry, ops.DeleteVm(vm_id))
                apply(registry, ops.CreateVm(vm_id, create_time_ns=n))
                apply(registry, ops.SetMemslot(vm_id, slot=Memslot(0, 0, 1 << 16)))
            apply(registry, ops.Fault(vm_id, gpa=n << 12, error_code=2))  # each one visible
            counters[i] = n + 1

    try:
        for _ in range(10):
            stop = threading.Event()
            workers = [threading.Thread(target=churn, args=(i, stop)) for i in range(6)]
            for w in workers:
                w.start()
            for n in range(8):
                apply(registry, ops.Fault("a", gpa=(0x110000 + n) << 12, error_code=2))
                store.snapshotter.checkpoint(everything=True)
            stop.set()  # at once: the state depends on the records around the last snapshot
            for w in workers:
                w.join()
            abandon(store)
            recovered, store = open_(tmp_path / "s")
            same(recovered, registry)
            registry = recovered
    finally:
        sys.setswitchinterval(interval)
        store.close()


def test_flags_build_the_durability_config() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["--state-dir", "x", "--durability", "power", "--snapshot-every", "5",
         "--snapshot-every-mb", "2", "--snapshot-interval", "1.5", "--discard-corrupt-tail"]
    )  # fmt: skip
    config = config_from_args(args).durability
    assert config == DurabilityConfig("power", 5, 2 << 20, 1.5, discard_corrupt_tail=True)
    assert config_from_args(parser.parse_args([])).durability == DurabilityConfig()
    text = parser.format_help()
    assert "--durability {process,power}" in text and "group commit" in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--durability", "paper"])


def test_a_failing_store_turns_health_not_serving(tmp_path: Path) -> None:
    with server_losing_its_disk(tmp_path / "s", "a") as (_port, stub, channel):
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.UpdateVm(vm_pb2.UpdateVmRequest(vm=vm_pb2.Vm(name="vms/a", display_name="x")))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        status = health.Check(health_pb2.HealthCheckRequest()).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
