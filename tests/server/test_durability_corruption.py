"""A damaged state directory is detected, reported precisely, and never silently turned
into another state: the server refuses to start on it, unless --discard-corrupt-tail is
given, which drops the damaged tail (or VM), says so, and moves the damaged files aside."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from server.durability.store import open_store
from tests.server.durable_model import fresh_registry
from tests.server.durable_state import (
    HOST_RECORD,
    NO_TRIGGERS,
    PHASE1,
    PHASE2,
    abandon,
    assert_state,
    build,
    model,
    refused,
    run_ops,
    serving,
)

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
    assert f"journal record {first + 2}: missing (the next record is {first + 3})" in message
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
    assert "this server reads version 1." in message


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


# --- the WAL file is part of the journal ----------------------------------------------------


def test_a_missing_wal_is_refused_and_the_snapshots_kept(
    pristine: tuple[Path, int, Path], tmp_path: Path
) -> None:
    """SIGKILLed with its latest commits (a snapshot's index among them) in journal.db-wal,
    then the WAL deleted: the snapshot files say the journal had more; refuse, delete
    nothing, and with --discard-corrupt-tail move them aside rather than delete them."""
    state = tmp_path / "state"
    shutil.copytree(pristine[2], state)
    (state / "journal.db-wal").unlink()
    (state / "journal.db-shm").unlink()
    snaps = sorted(p.name for p in (state / "snapshots").iterdir())
    assert snaps == ["a.8.snap", "b.8.snap"]
    message = refused(state)
    assert f"{state / 'journal.db'}: the journal lost committed records" in message
    assert "snapshots/a.8.snap, snapshots/b.8.snap hold VM state up to record 7" in message
    assert "but the journal holds no record and its index no snapshot" in message
    assert (
        "journal.db-wal (SQLite's write-ahead log" in message and "missing or truncated" in message
    )
    assert sorted(p.name for p in (state / "snapshots").iterdir()) == snaps
    with serving(state, "--discard-corrupt-tail") as srv:
        banner = "".join(srv.banner)
        assert "DISCARDED (--discard-corrupt-tail)" in banner
        assert "the journal lost committed records" in banner
        assert_state(srv, fresh_registry())
    assert sorted(p.name for p in state.glob("damaged-*/*.snap")) == snaps


def test_a_truncated_wal_is_blamed_on_the_journal(tmp_path: Path) -> None:
    """Two snapshots, the WAL cut between them: the index names the first snapshot's files,
    which the second one pruned. That is the journal's loss, not a missing snapshot."""
    state, killed = tmp_path / "state", tmp_path / "killed"
    registry = fresh_registry()
    store = open_store(state, NO_TRIGGERS, registry, HOST_RECORD)
    assert store is not None
    run_ops(registry, PHASE1)
    store.checkpoint()
    run_ops(registry, PHASE2[:5])
    store.journal.flush()
    wal = state / "journal.db-wal"
    before_second = wal.stat().st_size
    store.checkpoint()
    run_ops(registry, PHASE2[5:])
    store.journal.flush()
    shutil.copytree(state, killed)
    abandon(store)
    with open(killed / "journal.db-wal", "r+b") as handle:
        handle.truncate(before_second)
    message = refused(killed)
    assert f"{killed / 'journal.db'} (vm a): the journal lost committed records" in message
    assert "its snapshot index names snapshots/a.8.snap, which is gone, while the newer " in message
    assert "snapshots/a.13.snap is there" in message
    assert "journal.db-wal" in message
    assert "missing: the snapshot index refers to it" not in message


def test_a_snapshot_whose_index_never_committed_is_removed(state: Path, first: int) -> None:
    """A crash after a checkpoint wrote its files, before its index committed, leaves files
    the journal reaches (it commits their records first): leftovers, removed at start."""
    end = first + len(PHASE2)  # the journal's next record
    leftover = state / "snapshots" / f"a.{end}.snap"
    shutil.copy(next((state / "snapshots").glob("a.*.snap")), leftover)
    torn = state / "snapshots" / f"b.{end}.snap.tmp"
    torn.write_bytes(b"half")
    with serving(state) as srv:
        assert not leftover.exists() and not torn.exists()
        assert_state(srv, model())


def test_a_snapshot_beyond_the_journal_is_refused_and_kept(state: Path, first: int) -> None:
    beyond = state / "snapshots" / f"a.{first + len(PHASE2) + 1}.snap"
    shutil.copy(next((state / "snapshots").glob("a.*.snap")), beyond)
    message = refused(state)
    assert f"snapshots/{beyond.name} holds VM state up to record {first + len(PHASE2)}" in message
    assert f"the journal and its snapshot index end at record {first + len(PHASE2) - 1}" in message
    assert beyond.exists()
