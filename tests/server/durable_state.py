"""A state directory with snapshots and a journal tail, built in process, and its model.

Phase 1 runs and is snapshotted (the journal is truncated behind it); phase 2
runs and stays in the journal; then the store is abandoned as a SIGKILL would
leave it (no final snapshot). `model(n)` is a fresh model after phase 1 and
the first n ops of phase 2, the state a discarded journal tail must leave.

Also what the tests of a state directory share: `refused` (a real server
must refuse to start on it) and `serving` (a real server on it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from kvmmu.v1 import service_pb2_grpc, vm_pb2
from mmu.constants import KVM_MEM_LOG_DIRTY_PAGES
from mmu.memslots import Memslot
from server import ops
from server.app import create_server
from server.apply import apply
from server.config import ServerConfig
from server.durability.config import DurabilityConfig
from server.durability.layout import HostRecord
from server.durability.store import Store, open_store
from server.registry import Registry
from tests.server.conftest import REPO, ServerProcess, start_server
from tests.server.durable_model import HOST, fresh_registry, model_fingerprint, server_fingerprint

NO_TRIGGERS = DurabilityConfig(snapshot_records=0, snapshot_bytes=0, snapshot_seconds=0)
HOST_RECORD = HostRecord("intel-ept", (), HOST.config.to_dict())
SLOT_A = Memslot(0, base_gfn=0x100000, npages=0x10000, userspace_addr=0x7F0000000000)
SLOT_B = Memslot(0, base_gfn=0, npages=0x8000, userspace_addr=0x7E0000000000)


def _gpas(base_gfn: int, count: int, step: int = 1) -> np.ndarray[Any, np.dtype[np.uint64]]:
    return (np.arange(count, dtype=np.uint64) * np.uint64(step) + np.uint64(base_gfn)) << np.uint64(
        12
    )


PHASE1: list[ops.Op[Any]] = [
    ops.CreateVm("a", display_name="first", create_time_ns=1),
    ops.CreateVm("b", vm_type=1, tracing=True, create_time_ns=2),
    ops.SetMemslot("a", slot=SLOT_A),
    ops.SetMemslot("b", slot=SLOT_B),
    ops.BatchFault("a", gpas=_gpas(0x100000, 4096), shared_error_code=2),
    ops.Fault("b", gpa=0x3000, error_code=2),
    ops.SetMemoryAttributes("b", start_gfn=0x100, end_gfn=0x200, private=True),
]
PHASE2: list[ops.Op[Any]] = [
    ops.Fault("a", gpa=0x100000 << 12 | 0x5000_000, error_code=2),
    ops.BatchFault(
        "b", gpas=_gpas(0x10, 300, 3), error_codes=np.tile(np.array([2, 0, 6], np.uint64), 100)
    ),
    ops.Zap("a", kind="range", start_gfn=0x100000, end_gfn=0x100100),
    ops.SetMemslot(
        "a", slot=Memslot(0, 0x100000, 0x10000, KVM_MEM_LOG_DIRTY_PAGES, 0x7F0000000000)
    ),
    ops.BatchFault("a", gpas=_gpas(0x100200, 512), shared_error_code=2),
    ops.GetDirtyLog("a", slot_id=0),
    ops.Age("a", start_gfn=0, end_gfn=1 << 30),
    ops.UpdateVm("b", display_name="renamed", tracing=False),
    ops.CreateVm("c", create_time_ns=3),
    ops.SetMemslot("c", slot=SLOT_B),
    ops.Fault("c", gpa=0x7000, error_code=4),
    ops.DeleteVm("c"),
    ops.Fault("a", gpa=0xFEE00000, error_code=0),
]


def run_ops(registry: Registry, script: list[ops.Op[Any]]) -> None:
    for op in script:
        apply(registry, op)


def abandon(store: Store) -> None:
    """Leave the store as a killed process would: no final snapshot, nothing flushed later."""
    store.snapshotter.stop()
    store.db.close()
    store.lock.close()


def build(state: Path, config: DurabilityConfig = NO_TRIGGERS, killed: Path | None = None) -> int:
    """Build the state directory; returns the sequence of PHASE2's first record.

    `killed` gets a copy of the directory as a SIGKILL leaves it (with the WAL file that a
    clean close folds into journal.db)."""
    registry = fresh_registry()
    store = open_store(state, config, registry, HOST_RECORD)
    assert store is not None
    run_ops(registry, PHASE1)
    store.checkpoint()
    first = store.journal.next_seq
    run_ops(registry, PHASE2)
    store.journal.flush()
    if killed is not None:
        shutil.copytree(state, killed)
    abandon(store)
    return first


def model(phase2: int = len(PHASE2)) -> Registry:
    registry = fresh_registry()
    run_ops(registry, PHASE1 + PHASE2[:phase2])
    return registry


def refused(state: Path, *args: str, prefix: tuple[str, ...] = ()) -> str:
    """Start a server that must refuse: exit status 1, one clear message; returns it.

    `prefix` runs it through another command (setpriv, prlimit)."""
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "server.main", "--listen", "127.0.0.1:0", "--state-dir",
         str(state), *args],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "listening" not in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


@contextmanager
def serving(state: Path, *args: str) -> Iterator[ServerProcess]:
    srv = start_server("--state-dir", str(state), "--log-level", "warning", *args)
    try:
        yield srv
    finally:
        assert srv.stop() == 0


def assert_state(srv: ServerProcess, expected: Registry) -> None:
    with srv.channel() as channel:
        stub = service_pb2_grpc.MmuServiceStub(channel)
        listed = sorted(vm.vm_id for vm in stub.ListVms(vm_pb2.ListVmsRequest()).vms)
        assert listed == expected.ids()
        for vm_id in listed:
            assert server_fingerprint(stub, vm_id) == model_fingerprint(expected, vm_id), vm_id


@contextmanager
def server_losing_its_disk(
    state: Path, *vm_ids: str
) -> Iterator[tuple[int, service_pb2_grpc.MmuServiceStub, grpc.Channel]]:
    """A server on `state` holding VMs `vm_ids`, whose journal's disk is then gone;
    yields its port, a stub and the stub's channel, and leaves it as a kill would."""
    server, port = create_server("127.0.0.1:0", config=ServerConfig(state_dir=state))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.MmuServiceStub(channel)
            for vm_id in vm_ids:
                stub.CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id))
            assert server.store is not None
            server.store.db.close()  # the disk is gone
            yield port, stub, channel
    finally:
        server.grpc.stop(0).wait()
        if server.store is not None:
            abandon(server.store)
