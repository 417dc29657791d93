"""A damaged state directory is detected, reported precisely, and never silently turned
into another state: the server refuses to start on it, unless --discard-corrupt-tail is
given, which drops the damaged tail (or VM), says so, and moves the damaged files aside."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from kvmmu.v1 import service_pb2_grpc, vm_pb2
from server.registry import Registry
from tests.server.conftest import REPO, ServerProcess, start_server
from tests.server.durable_model import model_fingerprint, server_fingerprint
from tests.server.durable_state import PHASE2, build, model

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, Path]:
    base = tmp_path_factory.mktemp("durable")
    first = build(base / "state", killed=base / "killed")
    return base / "state", first, base / "killed"


@pytest.fixture
def state(pristine: tuple[Path, int, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "state"
    shutil.copytree(pristine[0], copy)
    return copy


@pytest.fixture
def first(pristine: tuple[Path, int, Path]) -> int:
    """The sequence number of the first journal record (PHASE2[0])."""
    return pristine[1]


def refused(state: Path, *args: str) -> str:
    """Start a server that must refuse: exit status 1, one clear message; returns it."""
    result = subprocess.run(
        [sys.executable, "-m", "server.main", "--listen", "127.0.0.1:0", "--state-dir",
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


def edit_db(state: Path, sql: str, *params: object) -> None:
    with closing(sqlite3.connect(state / "journal.db")) as db, db:
        db.execute(sql, params)


def record(state: Path, seq: int) -> bytes:
    with closing(sqlite3.connect(state / "journal.db")) as db:
        row = db.execute("SELECT record FROM journal WHERE seq = ?", (seq,)).fetchone()
    return bytes(row[0])


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


def test_intact_state_recovers_from_snapshots_and_journal(state: Path) -> None:
    with serving(state) as srv:
        banner = "".join(srv.banner)
        assert f"from 2 snapshots and {len(PHASE2)} journal records replayed" in banner
        assert_state(srv, model())


def test_flipped_byte_in_a_journal_record(state: Path, first: int) -> None:
    bad = first + 4  # PHASE2[4], a BatchFault: flip a byte inside its GPA array
    data = record(state, bad)
    edit_db(state, "UPDATE journal SET record = ? WHERE seq = ?", flip(data, len(data) - 9), bad)
    message = refused(state)
    assert f"journal.db: journal record {bad} (vm a): batch_fault: checksum mismatch" in message
    with serving(state, "--discard-corrupt-tail") as srv:
        banner = "".join(srv.banner)
        assert (
            f"DISCARDED (--discard-corrupt-tail): {state / 'journal.db'}: journal record" in banner
        )
        assert f"dropped {len(PHASE2) - 4} journal records" in banner
        assert "moved to" in banner
        assert_state(srv, model(4))
    with serving(state) as srv:  # the rebuilt directory is clean and keeps that state
        assert "DISCARDED" not in "".join(srv.banner)
        assert_state(srv, model(4))


def test_torn_journal_record(state: Path, first: int) -> None:
    last = first + len(PHASE2) - 1
    data = record(state, last)
    edit_db(state, "UPDATE journal SET record = ? WHERE seq = ?", data[: len(data) // 2], last)
    message = refused(state)
    assert f"journal record {last} (vm a): fault: checksum mismatch" in message
    assert "torn or damaged" in message
    with serving(state, "--discard-corrupt-tail") as srv:
        assert "dropped 1 journal record from" in "".join(srv.banner)
        assert_state(srv, model(len(PHASE2) - 1))


def test_missing_journal_record(state: Path, first: int) -> None:
    edit_db(state, "DELETE FROM journal WHERE seq = ?", first + 2)
    message = refused(state)
    assert f"journal record {first + 2}: records {first + 2} to {first + 2} are missing" in message
    with serving(state, "--discard-corrupt-tail") as srv:
        assert_state(srv, model(2))


def test_truncated_journal_file(state: Path) -> None:
    db = state / "journal.db"
    with open(db, "r+b") as handle:
        handle.truncate(db.stat().st_size * 3 // 4)
    message = refused(state, "--discard-corrupt-tail")
    assert f"{db}: not a readable SQLite database (database disk image is malformed)" in message
    assert "move the directory aside" in message


def test_torn_write_at_the_end_of_the_wal(pristine: tuple[Path, int, Path], tmp_path: Path) -> None:
    """A killed process's last, torn WAL frame is a commit that never completed (SQLite's
    frame checksums): never acknowledged, so dropping it is the one correct outcome."""
    state = tmp_path / "state"
    shutil.copytree(pristine[2], state)
    wal = state / "journal.db-wal"
    with open(wal, "r+b") as handle:
        handle.truncate(wal.stat().st_size - 100)
    with serving(state) as srv:
        assert f"{len(PHASE2) - 1} journal records replayed" in "".join(srv.banner)
        assert_state(srv, model(len(PHASE2) - 1))


def test_killed_state_with_its_wal_recovers(
    pristine: tuple[Path, int, Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    shutil.copytree(pristine[2], state)
    with serving(state) as srv:
        assert_state(srv, model())


def test_flipped_byte_in_a_snapshot(state: Path) -> None:
    snap = next((state / "snapshots").glob("b.*.snap"))
    data = snap.read_bytes()
    snap.write_bytes(flip(data, len(data) // 2))
    message = refused(state)
    assert f"{snap} (vm b): SHA-256 mismatch" in message
    with serving(state, "--discard-corrupt-tail") as srv:
        banner = "".join(srv.banner)
        assert "lost VMs (damaged snapshot): b" in banner
        expected = model()
        expected.remove("b")
        assert_state(srv, expected)
    assert list(state.glob(f"damaged-*/{snap.name}"))


def test_torn_snapshot(state: Path) -> None:
    snap = next((state / "snapshots").glob("a.*.snap"))
    snap.write_bytes(snap.read_bytes()[:1000])
    assert f"{snap} (vm a): torn: 1000 bytes, the index says" in refused(state)


def test_missing_snapshot_file(state: Path) -> None:
    snap = next((state / "snapshots").glob("a.*.snap"))
    snap.unlink()
    assert f"{snap} (vm a): missing: the snapshot index refers to it" in refused(state)


def test_damaged_snapshot_index_row(state: Path) -> None:
    edit_db(state, "UPDATE snapshots SET seq = seq - 1 WHERE vm_id = 'a'")
    assert "(vm a): snapshot index row checksum mismatch" in refused(state)


def test_unknown_newer_format_version(state: Path) -> None:
    path = state / "kvmmu-state.json"
    document = json.loads(path.read_text())
    document["version"] = 99
    path.write_text(json.dumps(document))
    message = refused(state)
    assert "state format version 99 was written by a newer kvmmu" in message
    assert "reads versions 1 to 1" in message


def test_damaged_format_file(state: Path) -> None:
    path = state / "kvmmu-state.json"
    path.write_text(path.read_text().replace("intel-ept", "intel-epT"))
    assert "kvmmu-state.json: SHA-256 mismatch" in refused(state)


def test_missing_format_file(state: Path) -> None:
    (state / "kvmmu-state.json").unlink()
    assert "kvmmu-state.json: missing, but journal.db holds state" in refused(state)


def test_other_host_configuration_is_refused(state: Path) -> None:
    message = refused(state, "--host-set", "l1tf=true")
    assert "was recorded on another host configuration (--profile intel-ept)" in message
    assert "l1tf False (recorded) vs True" in message
    assert "another --state-dir" in message
    message = refused(state, "--profile", "amd-npt")
    assert "--profile amd-npt" in message


def test_a_directory_in_use_is_refused(state: Path) -> None:
    with serving(state) as srv:
        message = refused(state)
        assert f"is in use by another kvmmu-server (pid {srv.proc.pid})" in message


def test_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    message = refused(tmp_path)
    assert "holds files (notes.txt) but no kvmmu-state.json" in message
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_file_is_not_a_state_directory(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    assert f"{path}: cannot be used as the state directory" in refused(path)
