"""Recovery: rebuild the registry from the snapshots and the journal tail.

Every check fails loudly with a CorruptState naming the file, the record
and what is wrong: SQLite's own integrity check, the meta and snapshot index
rows' CRCs, each snapshot file's presence, size and SHA-256, and for the
journal its sequence numbers (no gap from where it was truncated), each
row's CRC, each record's decoding, and that replaying a record ends as it
did when it was journaled (success, or an exception for a `failed` record).

The snapshot files are also evidence of what the journal held. A checkpoint
commits every record below a snapshot's sequence S before it writes the
file, so a file whose S is beyond everything the journal and its index know
means committed records were lost: SQLite's WAL file (journal.db-wal, where
the latest commits live until checkpointed) was deleted or truncated. So
does an index row naming a file that is gone while a newer file of the same
VM is there (the commit of the newer index was lost; the old file was
pruned after it). Both refuse the start; nothing is deleted. An
unreferenced file whose S the journal does reach is what a crash between
writing a snapshot and committing the index leaves, and is removed.

With `discard` (--discard-corrupt-tail) the damage is collected instead of
raised: the journal is replayed up to its first damaged record and dropped
from there on; a VM whose snapshot is damaged is dropped with its journal
records (until a CreateVm of the same id). The store then rebuilds the
directory from what was recovered and moves the damaged files aside.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from server import ops
from server.apply import apply
from server.config import Limits
from server.durability.codec import Record, RecordError, decode, row_crc, text_crc
from server.durability.errors import CorruptState
from server.durability.layout import SNAPSHOT_DIR
from server.durability.snapshots import SnapshotRow, load, parse_file_name, read_index
from server.registry import Registry, VmEntry

# Replay must rebuild what was acknowledged whatever the limits are now.
_UNLIMITED = 1 << 40


@dataclass(slots=True)
class Recovery:
    """What a start recovered (and, with --discard-corrupt-tail, what it dropped)."""

    vms: int = 0
    sptes: int = 0
    snapshots: int = 0
    replayed: int = 0
    covered: int = 0  # records already in a snapshot
    seconds: float = 0.0
    next_seq: int = 1
    truncated_below: int = 1
    rows: dict[str, SnapshotRow] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    damage: list[CorruptState] = field(default_factory=list)
    dropped_records: int = 0
    lost_vms: list[str] = field(default_factory=list)
    damaged_files: list[Path] = field(default_factory=list)
    db_damaged: bool = False

    def summary(self) -> str:
        return (
            f"recovered {count(self.vms, 'VM')} ({count(self.sptes, 'SPTE')}) from "
            f"{count(self.snapshots, 'snapshot')} and {count(self.replayed, 'journal record')} "
            f"replayed in {self.seconds:.3f} s"
        )


def count(n: int, noun: str) -> str:
    """'1 VM', '3 VMs', '1,048,576 SPTEs'."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def relaxed(limits: Limits) -> Limits:
    """The limits a replay runs with: acknowledged VMs and memslots are never refused."""
    return replace(limits, max_vms=_UNLIMITED, max_memslots_per_vm=_UNLIMITED)


class _Replay:
    def __init__(self, db_path: Path, registry: Registry, discard: bool) -> None:
        self.db_path = db_path
        self.registry = registry
        self.discard = discard
        self.out = Recovery()
        self.lost: set[str] = set()  # VMs dropped (until a CreateVm of the same id)
        self.lost_ever: set[str] = set()
        self.limits = registry.limits
        self.replay_limits = relaxed(registry.limits)

    def lose(self, vm_id: str) -> None:
        self.lost.add(vm_id)
        self.lost_ever.add(vm_id)

    def damaged(self, exc: CorruptState) -> None:
        if not self.discard:
            raise exc
        self.out.damage.append(exc)


def recover(
    db: sqlite3.Connection,
    db_path: Path,
    snapshot_dir: Path,
    registry: Registry,
    *,
    discard: bool,
) -> Recovery:
    """Load snapshots and replay the journal tail into `registry` (which has no journal)."""
    start = time.perf_counter()
    replay = _Replay(db_path, registry, discard)
    registry.limits = replay.replay_limits
    try:
        _check_database(db, replay)
        _check_snapshot_files(db, snapshot_dir, replay)
        _load_snapshots(db, snapshot_dir, replay)
        _replay_journal(db, replay)
    finally:
        registry.limits = replay.limits
    out = replay.out
    out.vms = len(registry)
    out.sptes = sum(entry.vm.spte_count() for entry in registry.entries())
    out.lost_vms = sorted(replay.lost_ever)
    out.seconds = time.perf_counter() - start
    return out


def _check_database(db: sqlite3.Connection, replay: _Replay) -> None:
    path = replay.db_path
    try:
        problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    if problems != ["ok"]:
        replay.out.db_damaged = True
        replay.damaged(CorruptState(path, "SQLite integrity check failed: " + "; ".join(problems)))
    try:
        row = db.execute("SELECT value, crc FROM meta WHERE key = 'truncated_below'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise CorruptState(
            path,
            f"the meta table is unreadable ({exc}); nothing can be "
            "recovered safely: move the directory aside",
        ) from exc
    if row is None or text_crc("truncated_below", row[0]) != row[1]:
        what = "missing" if row is None else "checksum mismatch"
        raise CorruptState(path, f"meta truncated_below: {what}; the journal's start is unknown")
    replay.out.truncated_below = int(row[0])


def _journal_lost(what: str) -> str:
    return (
        f"the journal lost committed records: {what}. The likely cause: journal.db-wal (SQLite's "
        "write-ahead log, which holds the latest commits) is missing or truncated: deleted, or "
        "a copy or backup made without it or while the server ran. Restore the directory "
        "whole from where it came; --discard-corrupt-tail starts from what the journal still "
        "holds and moves these files to damaged-<time>/"
    )


def _known_end(db: sqlite3.Connection, replay: _Replay) -> tuple[set[str], int] | None:
    """The files the index names, and the sequence after everything journal and index know."""
    try:
        index = db.execute("SELECT file, seq FROM snapshots").fetchall()
        last = db.execute("SELECT MAX(seq) FROM journal").fetchone()[0]
    except sqlite3.DatabaseError:
        return None  # the damage is reported by the steps that read these
    ends = [replay.out.truncated_below, (last or 0) + 1, *(int(seq) for _, seq in index)]
    return {str(file) for file, _ in index}, max(ends)


def _check_snapshot_files(db: sqlite3.Connection, snapshot_dir: Path, replay: _Replay) -> None:
    """Refuse snapshot files written after records the journal no longer has."""
    known = _known_end(db, replay)
    if known is None:
        return
    named, end = known
    beyond: list[tuple[int, Path]] = []
    for path in snapshot_dir.iterdir():
        parsed = parse_file_name(path.name)
        if parsed is not None and path.name not in named and parsed[1] > end:
            beyond.append((parsed[1], path))
    if not beyond:
        return
    beyond.sort()
    names = [f"{SNAPSHOT_DIR}/{path.name}" for _, path in beyond]
    listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    holds = "holds" if len(beyond) == 1 else "hold"
    journal = (
        "the journal holds no record and its index no snapshot"
        if end == 1
        else f"the journal and its snapshot index end at record {end - 1}"
    )
    what = f"{listed} {holds} VM state up to record {beyond[-1][0] - 1}, but {journal}"
    replay.damaged(CorruptState(replay.db_path, _journal_lost(what)))
    replay.out.damaged_files.extend(path for _, path in beyond)


def _newer_files(snapshot_dir: Path, row: SnapshotRow) -> list[str]:
    newer = []
    for path in snapshot_dir.iterdir():
        parsed = parse_file_name(path.name)
        if parsed is not None and parsed[0] == row.vm_id and parsed[1] > row.seq:
            newer.append(f"{SNAPSHOT_DIR}/{path.name}")
    return sorted(newer)


def _load_snapshots(db: sqlite3.Connection, snapshot_dir: Path, replay: _Replay) -> None:
    try:
        rows, bad_rows = read_index(db, replay.db_path)
    except sqlite3.DatabaseError as exc:
        raise CorruptState(
            replay.db_path,
            f"the snapshot index is unreadable ({exc}); nothing can be "
            "recovered safely: move the directory aside",
        ) from exc
    for bad in bad_rows:
        replay.damaged(bad)
        replay.out.db_damaged = True
        if bad.vm_id is not None:
            replay.lose(bad.vm_id)
    registry = replay.registry
    for row in rows:
        replay.out.rows[row.vm_id] = row
        try:
            entry = load(snapshot_dir, row, registry.host)
        except CorruptState as exc:
            problem = exc
            newer = [] if (snapshot_dir / row.file).exists() else _newer_files(snapshot_dir, row)
            if newer:  # the index that named the newer file (and pruned this one) was lost
                what = (
                    f"its snapshot index names {SNAPSHOT_DIR}/{row.file}, which is gone, while "
                    f"the newer {', '.join(newer)} is there"
                )
                problem = CorruptState(replay.db_path, _journal_lost(what), vm_id=row.vm_id)
            else:
                replay.out.damaged_files.append(exc.path)
            replay.damaged(problem)
            replay.lose(row.vm_id)
            continue
        registry.insert(row.vm_id, _constant(entry))
        replay.out.snapshots += 1


def _constant(entry: VmEntry) -> Callable[[], VmEntry]:
    return lambda: entry


def _rows(db: sqlite3.Connection, start: int) -> Iterator[tuple[int, str, str, bytes, int]]:
    cursor = db.execute(
        "SELECT seq, vm_id, op, record, crc FROM journal WHERE seq >= ? ORDER BY seq", (start,)
    )
    while batch := cursor.fetchmany(256):
        yield from batch


def _replay_journal(db: sqlite3.Connection, replay: _Replay) -> None:
    out = replay.out
    path = replay.db_path
    expected = out.truncated_below
    try:
        stale = db.execute("SELECT COUNT(*) FROM journal WHERE seq < ?", (expected,)).fetchone()[0]
        if stale:
            replay.damaged(
                CorruptState(
                    path, f"{stale} records below the truncation point {expected} are still there"
                )
            )
        for seq, vm_id, op_name, data, crc in _rows(db, expected):
            problem = _replay_one(replay, expected, seq, vm_id, op_name, bytes(data), crc)
            if problem is not None:
                replay.damaged(problem)
                _count_dropped(db, replay, problem.seq or seq)
                return
            expected = seq + 1
    except sqlite3.DatabaseError as exc:
        problem = CorruptState(path, f"unreadable from here on ({exc})", seq=expected)
        replay.damaged(problem)
        out.db_damaged = True
        _count_dropped(db, replay, expected)
    finally:
        rows_max = max((r.seq for r in out.rows.values()), default=1)
        out.next_seq = max(expected, rows_max, out.truncated_below)


def _count_dropped(db: sqlite3.Connection, replay: _Replay, first: int) -> None:
    try:
        replay.out.dropped_records = db.execute(
            "SELECT COUNT(*) FROM journal WHERE seq >= ?", (first,)
        ).fetchone()[0]
    except sqlite3.DatabaseError:
        replay.out.dropped_records = -1  # unknown


def _replay_one(
    replay: _Replay, expected: int, seq: int, vm_id: str, op_name: str, data: bytes, crc: int
) -> CorruptState | None:
    """Apply one journal row; the damage it shows, if any (nothing is applied then)."""
    path = replay.db_path
    if seq != expected:
        what = (
            f"missing (the next record is {seq})"
            if seq == expected + 1
            else f"records {expected} to {seq - 1} are missing"
        )
        return CorruptState(path, what, seq=expected)
    computed = row_crc(seq, vm_id, op_name, data)
    if computed != crc:
        return CorruptState(
            path,
            f"{op_name}: checksum mismatch (stored {crc:08x}, computed {computed:08x}); "
            "the record is torn or damaged",
            seq=seq,
            vm_id=vm_id,
        )
    try:
        record = decode(data)
    except RecordError as exc:
        return CorruptState(path, f"{op_name}: {exc}", seq=seq, vm_id=vm_id)
    if record.op.vm_id != vm_id or record.op.name != op_name:
        return CorruptState(path, "the record does not match its row", seq=seq, vm_id=vm_id)
    out = replay.out
    row = out.rows.get(vm_id)
    if row is not None and seq < row.seq:
        out.covered += 1
        return None
    if vm_id in replay.lost:
        if not isinstance(record.op, ops.CreateVm):
            out.dropped_records += 1
            return None
        replay.lost.discard(vm_id)
    problem = _apply_record(replay, record)
    if problem is not None:
        return CorruptState(path, f"{op_name}: {problem}", seq=seq, vm_id=vm_id)
    out.replayed += 1
    out.last_seq[vm_id] = seq
    return None


def _apply_record(replay: _Replay, record: Record) -> str | None:
    registry = replay.registry
    if record.max_tables is not None:
        registry.limits = replace(replay.replay_limits, max_tables_per_vm=record.max_tables)
    try:
        apply(registry, record.op)
    except Exception as exc:
        if record.failed is None:
            return (
                f"replay diverged: the op succeeded when it was journaled, now it raises "
                f"{type(exc).__name__}: {exc}"
            )
        return None
    finally:
        registry.limits = replay.replay_limits
    if record.failed is not None:
        return (
            f"replay diverged: the op raised {record.failed} when it was journaled, now it succeeds"
        )
    return None
