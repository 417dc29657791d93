"""Starting and stopping on a state directory: what is checked before serving, what a
stop that cannot write its final snapshot does, and the lock. Real servers, real files."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kvmmu.v1 import fault_pb2, memslot_pb2, service_pb2_grpc, vm_pb2
from server import ops
from server.apply import apply
from server.durability.config import DurabilityConfig
from server.durability.recovery import Recovery
from server.durability.store import open_store
from tests.server.conftest import REPO, ServerProcess, start_server
from tests.server.durable_model import fresh_registry, server_fingerprint
from tests.server.durable_state import (
    HOST_RECORD,
    PHASE1,
    abandon,
    build,
    refused,
    run_ops,
    serving,
)

pytestmark = pytest.mark.timeout(120)
NOBODY = 65534


def server_cmd(state: Path | str, *args: str) -> list[str]:
    return [sys.executable, "-m", "server.main", "--listen", "127.0.0.1:0", "--state-dir",
            str(state), *args]  # fmt: skip


def run(cmd: list[str], cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )  # fmt: skip


# --- a directory that is not (yet) ours ---------------------------------------------------


def test_an_interrupted_first_start_is_finished(tmp_path: Path) -> None:
    """Killed before the format file was renamed into place: its temporary file and a
    half-made journal are the server's own, not a reason to refuse the directory."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "kvmmu-state.json.tmp").write_text("{")
    (state / "journal.db").write_bytes(b"")
    with serving(state) as srv:
        assert "new state directory: nothing to recover" in "".join(srv.banner)
        assert not (state / "kvmmu-state.json.tmp").exists()
    with serving(state) as srv:  # and it is a state directory now
        assert "recovered 0 VMs" in "".join(srv.banner)


def test_a_refused_directory_is_left_untouched(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    message = refused(tmp_path)
    assert "holds files (notes.txt) but no kvmmu-state.json" in message
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # no LOCK, no journal


@pytest.mark.parametrize("env", [False, True])
def test_an_empty_state_dir_is_a_usage_error(tmp_path: Path, env: bool) -> None:
    """Path("") is the working directory: an empty value is a mistake, not a place."""
    cmd = [sys.executable, "-m", "server.main", "--listen", "127.0.0.1:0"]
    result = (
        run(cmd, cwd=tmp_path, KVMMU_STATE_DIR="")
        if env
        else run([*cmd, "--state-dir", ""], cwd=tmp_path)
    )
    assert result.returncode == 2, result.stderr
    assert "--state-dir is empty: give a directory, or 'none'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_format_file_that_is_a_directory_is_a_state_dir_error(tmp_path: Path) -> None:
    build(tmp_path / "state")
    path = tmp_path / "state" / "kvmmu-state.json"
    path.unlink()
    path.mkdir()
    message = refused(tmp_path / "state")
    assert f"cannot start: {path}: cannot be read (Is a directory)" in message


def test_snapshots_that_is_a_file_is_a_state_dir_error(tmp_path: Path) -> None:
    build(tmp_path / "state")
    path = tmp_path / "state" / "snapshots"
    shutil.rmtree(path)
    path.write_text("")
    assert f"cannot start: {path}: not a directory; VM snapshots are written there" in refused(
        tmp_path / "state"
    )


def test_an_empty_journal_is_called_empty(tmp_path: Path) -> None:
    build(tmp_path / "state")
    (tmp_path / "state" / "journal.db").write_bytes(b"")
    message = refused(tmp_path / "state")
    assert "journal.db: empty (0 bytes): the file was truncated or replaced" in message
    assert "schema version" not in message


# --- write access is checked before serving -----------------------------------------------


@pytest.fixture
def unprivileged(tmp_path: Path) -> Iterator[tuple[tuple[str, ...], Path]]:
    """A command prefix that runs the server without the power to write what its
    permissions forbid (as root: as nobody, via setpriv), and a directory it owns."""
    if os.geteuid() != 0:
        yield (), tmp_path
        return
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    base = Path(tempfile.mkdtemp(prefix="kvmmu-unpriv-"))
    os.chmod(base, 0o755)
    try:
        yield ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"), base
    finally:
        shutil.rmtree(base)


def chown_tree(root: Path, uid: int) -> None:
    if os.geteuid() != 0:
        return
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, uid)


@pytest.mark.parametrize(
    ("target", "mode", "why"),
    [
        ("", 0o555, "the journal, its WAL file and the lock are created there"),
        ("journal.db", 0o444, "every change is written to it"),
        ("snapshots", 0o555, "VM snapshots are written there"),
    ],
)
def test_unwritable_state_is_refused_at_start(
    unprivileged: tuple[tuple[str, ...], Path], target: str, mode: int, why: str
) -> None:
    prefix, base = unprivileged
    state = base / "state"
    build(state)
    chown_tree(state, NOBODY)
    path = state / target if target else state
    path.chmod(mode)
    try:
        message = refused(state, prefix=prefix)
    finally:
        path.chmod(0o755 if path.is_dir() else 0o644)
    uid = NOBODY if prefix else os.geteuid()
    assert f"cannot start: {path}: not writable by this server (uid {uid}): " in message
    assert "Permission denied" in message and why in message


def test_an_unwritable_new_directory_is_refused(
    unprivileged: tuple[tuple[str, ...], Path],
) -> None:
    prefix, base = unprivileged
    state = base / "new"
    state.mkdir()
    chown_tree(state, NOBODY)
    state.chmod(0o555)
    try:
        message = refused(state, prefix=prefix)
    finally:
        state.chmod(0o755)
    assert f"{state}: not writable by this server" in message
    assert "SQLite" not in message


# --- the snapshot interval and the snapshot thread -----------------------------------------


@pytest.mark.parametrize("value", ["inf", "1e10", "nan", "1e-6", "-1"])
def test_a_snapshot_interval_out_of_range_is_a_usage_error(tmp_path: Path, value: str) -> None:
    result = run(server_cmd(tmp_path / "s", "--snapshot-interval", value))
    assert result.returncode == 2, result.stderr
    assert "--snapshot-interval must be 0 (no snapshots by time) or 0.1 to 604800" in (
        result.stderr
    )
    assert not (tmp_path / "s").exists()


def test_the_snapshot_thread_survives_a_failed_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint that fails is logged; the thread lives on and the next one succeeds."""
    state = tmp_path / "s"
    config = DurabilityConfig(snapshot_records=1, snapshot_bytes=0, snapshot_seconds=0)
    registry = fresh_registry()
    store = open_store(state, config, registry, HOST_RECORD)
    assert store is not None
    store.snapshotter.retry_seconds = 0.05
    snapshots = state / "snapshots"
    snapshots.rename(state / "away")
    snapshots.write_text("")  # writing a snapshot now fails (ENOTDIR)
    try:
        with caplog.at_level(logging.ERROR, logger="kvmmu.durability"):
            apply(registry, PHASE1[0])
            deadline = time.monotonic() + 10
            while "snapshot failed" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.02)
        assert "snapshot failed ([Errno 20] Not a directory" in caplog.text
        assert "Traceback" not in caplog.text
        snapshots.unlink()
        (state / "away").rename(snapshots)
        apply(registry, PHASE1[1])
        deadline = time.monotonic() + 10
        while store.snapshotter.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.snapshotter.checkpoints == 1
        assert sorted(p.name for p in snapshots.iterdir()) == ["a.3.snap", "b.3.snap"]
    finally:
        abandon(store)


# --- a final snapshot that cannot be written ----------------------------------------------


def start_limited(state: Path, log: Path, *args: str, max_file: int) -> ServerProcess:
    """A server whose files cannot grow beyond `max_file` bytes (RLIMIT_FSIZE: what a full
    disk does to a write, to this process only)."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            ["prlimit", f"--fsize={max_file}", *server_cmd(state, "--log-level", "info", *args)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    assert proc.stdout is not None
    banner = []
    for line in proc.stdout:
        banner.append(line)
        if "listening on" in line:
            return ServerProcess(proc, int(line.rsplit(":", 1)[1]), log, banner)
    proc.wait(30)
    raise AssertionError(f"the server did not start: {log.read_text()}")


def wait_for(log: Path, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_snapshots_that_cannot_be_written_lose_nothing(tmp_path: Path) -> None:
    """The snapshot of a VM with scattered faults (2 MB) does not fit under a 1 MB file-size
    limit; its journal records (4 KB) do. The background snapshot fails and removes its
    .tmp; the final one at SIGTERM fails too: one warning, "stopped", exit 0; the restart
    replays the journal into the same state."""
    state, log = tmp_path / "s", tmp_path / "server.log"
    srv = start_limited(state, log, "--snapshot-every", "3", max_file=1 << 20)
    try:
        with srv.channel() as channel:
            stub = service_pb2_grpc.MmuServiceStub(channel)
            stub.CreateVm(vm_pb2.CreateVmRequest(vm_id="a"))
            slot = memslot_pb2.Memslot(slot=0, guest_phys_addr=0, memory_size=4 << 30)
            stub.SetMemslot(memslot_pb2.SetMemslotRequest(parent="vms/a", memslot=slot))
            gpas = (np.arange(500, dtype=np.uint64) << np.uint64(21)).tolist()
            request = fault_pb2.BatchFaultRequest(name="vms/a", gpas=gpas, shared_error_code=2)
            stub.BatchFault(request)
            wait_for(log, "snapshot failed")  # the background snapshot (3 records)
            stub.Fault(fault_pb2.FaultRequest(name="vms/a", gpa=0x1000, error_code=2))
            before = server_fingerprint(stub, "a")
        assert not list((state / "snapshots").iterdir())  # no .tmp eating the space
        srv.proc.send_signal(signal.SIGTERM)
        out, _ = srv.proc.communicate(timeout=60)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.communicate()
    err = log.read_text()
    assert srv.proc.returncode == 0, err
    assert "kvmmu-server: stopped" in out
    assert "Traceback" not in err, err
    assert "snapshot failed ([Errno 27] File too large)" in err
    final = [line for line in err.splitlines() if "final snapshot not written" in line]
    assert len(final) == 1, err
    assert "nothing is lost: the journal holds every acknowledged change" in final[0]
    assert not list((state / "snapshots").iterdir())
    with serving(state) as restarted, restarted.channel() as channel:
        assert "4 journal records replayed" in "".join(restarted.banner)
        assert server_fingerprint(service_pb2_grpc.MmuServiceStub(channel), "a") == before


# --- what the server prints, once ---------------------------------------------------------


def test_the_banner_is_printed_once_at_info_level(tmp_path: Path) -> None:
    srv = start_server("--state-dir", str(tmp_path / "s"), "--log-level", "info")
    assert srv.stop() == 0
    text = "".join(srv.banner) + srv.log.read_text()
    assert text.count("state in ") == 1, text
    assert text.count("new state directory") == 1, text


def test_counts_are_pluralised() -> None:
    one = Recovery(vms=1, sptes=1, snapshots=1, replayed=1)
    assert one.summary().startswith("recovered 1 VM (1 SPTE) from 1 snapshot and 1 journal record")
    many = Recovery(vms=2, sptes=1 << 20, snapshots=0, replayed=0)
    assert many.summary().startswith("recovered 2 VMs (1,048,576 SPTEs) from 0 snapshots")


# --- one server per directory ---------------------------------------------------------------


def test_deleting_lock_does_not_let_a_second_server_in(tmp_path: Path) -> None:
    state = tmp_path / "s"
    with serving(state) as srv:
        (state / "LOCK").unlink()
        message = refused(state)
        assert "is in use by another kvmmu-server" in message
        with srv.channel() as channel:  # the first one is unharmed
            stub = service_pb2_grpc.MmuServiceStub(channel)
            stub.CreateVm(vm_pb2.CreateVmRequest(vm_id="a"))


def test_a_store_can_be_reopened_after_close(tmp_path: Path) -> None:
    registry = fresh_registry()
    store = open_store(tmp_path / "s", DurabilityConfig(), registry, HOST_RECORD)
    assert store is not None
    run_ops(registry, [ops.CreateVm("a", create_time_ns=1)])
    store.close()
    again = fresh_registry()
    reopened = open_store(tmp_path / "s", DurabilityConfig(), again, HOST_RECORD)
    assert reopened is not None
    assert again.ids() == ["a"]
    reopened.close()
