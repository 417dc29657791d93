"""The durable store of a server: open (initialise or recover), journal, snapshot, close.

`open_store` runs before the server serves: it decides the directory is a
state directory (or a new one) and that it can write it, locks it, checks
its format version and host configuration, recovers the registry
(snapshots + journal tail), and then attaches the journal to the registry,
so every change from then on is durable before it is acknowledged. Every
failure to do so is a StateError naming the path (the server refuses to
start); `Store.close` never raises: a final snapshot that cannot be written
loses nothing, since the journal holds every acknowledged change.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.config import ServerConfig
from server.durability import layout
from server.durability.checkpoint import Snapshotter
from server.durability.config import DurabilityConfig
from server.durability.errors import CorruptState, StateError, StateIncompatible, StoreFailed
from server.durability.journal import Journal
from server.durability.layout import DirLock, HostRecord
from server.durability.recovery import Recovery, count, recover
from server.durability.snapshots import SUFFIX, SnapshotRow
from server.registry import Registry

log = logging.getLogger("kvmmu.durability")
_LEVEL_TEXT = {
    "process": "every acknowledged change survives the server process being killed",
    "power": "every acknowledged change is fsynced: it survives power loss",
}


@dataclass
class Store:
    state_dir: Path
    config: DurabilityConfig
    db: sqlite3.Connection
    journal: Journal
    snapshotter: Snapshotter
    recovery: Recovery
    lock: DirLock
    created: bool
    notes: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        """What the server prints at start: where state lives, and what was recovered."""
        cfg = self.config
        triggers = [
            f"{cfg.snapshot_records} records" if cfg.snapshot_records else "",
            f"{cfg.snapshot_bytes >> 20} MiB" if cfg.snapshot_bytes else "",
            f"{cfg.snapshot_seconds:g} s" if cfg.snapshot_seconds else "",
        ]
        every = " / ".join(t for t in triggers if t) or "shutdown only"
        lines = [
            f"state in {self.state_dir} (format {layout.FORMAT_VERSION}, durability "
            f"{cfg.level}: {_LEVEL_TEXT[cfg.level]}; snapshots every {every})",
        ]
        if self.created:
            lines.append("new state directory: nothing to recover")
        else:
            lines.append(self.recovery.summary())
        lines.extend(self.notes)
        return lines

    def checkpoint(self) -> None:
        self.snapshotter.checkpoint()

    def close(self) -> None:
        """Graceful shutdown (after the last call): a final snapshot, then release the dir.

        Never raises. A final snapshot that cannot be written (disk full, an
        unwritable snapshots/) is reported in one warning and otherwise
        ignored: the journal still holds every acknowledged change, so the
        next start replays it and nothing is lost.
        """
        self.snapshotter.stop()
        try:
            if self.journal.failure is None:
                self._final_snapshot()
            else:
                log.error("no final snapshot: the journal failed (%s)", self.journal.failure)
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.lock.close()

    def _final_snapshot(self) -> None:
        try:
            self.journal.flush()
            if self.journal.stats.records_since_snapshot or self.recovery.replayed:
                report = self.snapshotter.checkpoint()
                log.info(
                    "final snapshot: %s written, %s unchanged, in %.3f s",
                    count(report.taken, "VM"),
                    count(report.kept, "VM"),
                    report.seconds,
                )
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (OSError, sqlite3.Error, StoreFailed) as exc:
            log.warning(
                "final snapshot not written (%s); nothing is lost: the journal holds every "
                "acknowledged change and the next start replays it",
                exc,
            )


def open_server_store(config: ServerConfig, registry: Registry) -> Store | None:
    """The store of a server's config (None with --state-dir none)."""
    host = HostRecord(config.profile, config.host_overrides, registry.host.config.to_dict())
    return open_store(config.state_dir, config.durability, registry, host)


def open_store(
    state_dir: Path | None, config: DurabilityConfig, registry: Registry, host: HostRecord
) -> Store | None:
    """Open (or initialise) the state directory and recover `registry` from it."""
    if state_dir is None:
        return None
    try:
        if state_dir.exists() and not state_dir.is_dir():
            raise StateError(
                f"{state_dir}: cannot be used as the state directory (not a directory)"
            )
        state_dir.mkdir(parents=True, exist_ok=True)
        layout.is_new(state_dir)  # refuses someone else's directory before writing to it
        layout.check_writable(state_dir)
        lock = layout.lock_dir(state_dir)
    except OSError as exc:
        raise StateError(f"{state_dir}: cannot be used as the state directory ({exc})") from exc
    try:
        return _open(state_dir, config, registry, host, lock)
    except OSError as exc:  # a file of the directory that is not what it must be
        lock.close()
        where = exc.filename if exc.filename is not None else state_dir
        raise StateError(f"{where}: {exc.strerror or exc}") from exc
    except sqlite3.Error as exc:  # what SQLite raised that recovery did not call damage
        lock.close()
        raise StateError(f"{state_dir / layout.DB_FILE}: {exc}") from exc
    except BaseException:
        lock.close()
        raise


def _open(
    state_dir: Path,
    config: DurabilityConfig,
    registry: Registry,
    host: HostRecord,
    lock: DirLock,
) -> Store:
    db_path = state_dir / layout.DB_FILE
    snapshot_dir = state_dir / layout.SNAPSHOT_DIR
    _finish_rebuild(db_path)
    created = layout.is_new(state_dir)  # again, now that the directory is ours
    if created:
        _initialise(state_dir, host)
    else:
        (state_dir / (layout.FORMAT_FILE + layout.TMP_SUFFIX)).unlink(missing_ok=True)
        _, recorded = layout.read_format(state_dir)
        layout.check_host(state_dir, recorded, host)
    if not db_path.exists():
        raise CorruptState(db_path, "missing: the format file says this directory holds state")
    snapshot_dir.mkdir(exist_ok=True)  # check_writable refused anything but a directory
    db = _connect(db_path, config)
    try:
        recovery = recover(db, db_path, snapshot_dir, registry, discard=config.discard_corrupt_tail)
        notes: list[str] = []
        rows = recovery.rows
        if recovery.damage:
            db.close()
            rows, notes = _rebuild(state_dir, recovery, registry, config)
            db = _connect(db_path, config)
        journal = Journal(db, recovery.next_seq, lambda: registry.limits.max_tables_per_vm)
        journal.last_seq.update(recovery.last_seq)
        snapshotter = Snapshotter(db, snapshot_dir, registry, journal, config, rows)
        journal.on_commit = snapshotter.on_commit
        snapshotter.remove_unreferenced()
    except BaseException:
        db.close()
        raise
    journal.stats.records_since_snapshot = recovery.replayed
    registry.journal = journal
    snapshotter.start()
    if snapshotter.due(journal.stats):
        snapshotter.on_commit(journal.stats)
    # What was recovered is for the caller to report (kvmmu-server prints Store.describe()).
    return Store(state_dir, config, db, journal, snapshotter, recovery, lock, created, notes)


def _connect(db_path: Path, config: DurabilityConfig) -> sqlite3.Connection:
    if db_path.stat().st_size == 0:  # before SQLite turns it into an empty database
        raise CorruptState(
            db_path,
            "empty (0 bytes): the file was truncated or replaced; nothing in it can be "
            "recovered, not even with --discard-corrupt-tail: restore the directory from "
            "a backup, or move it aside",
        )
    try:
        db = layout.connect(db_path, config.level)
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise CorruptState(
            db_path,
            f"not a readable SQLite database ({exc}); nothing in it can be recovered "
            "automatically, not even with --discard-corrupt-tail: move the directory aside",
        ) from exc
    if version != layout.SCHEMA_VERSION:
        db.close()
        if version > layout.SCHEMA_VERSION:
            raise StateIncompatible(
                f"{db_path}: schema version {version} was written by a newer kvmmu; this "
                f"server knows schema {layout.SCHEMA_VERSION}"
            )
        raise CorruptState(
            db_path,
            f"schema version {version}, expected {layout.SCHEMA_VERSION}: this is not a kvmmu "
            "journal (or its first page was damaged)",
        )
    return db


def _initialise(state_dir: Path, host: HostRecord) -> None:
    """A new state directory; the format file is written last (it marks it complete).

    What an interrupted initialisation left (see layout.INIT_LEFTOVERS) is
    removed first, unless journal.db holds state (then the format file was lost)."""
    db_path = state_dir / layout.DB_FILE
    if db_path.exists() and _holds_state(db_path):
        raise CorruptState(
            state_dir / layout.FORMAT_FILE,
            f"missing, but {layout.DB_FILE} holds state: the format and host it was recorded "
            "with are unknown",
        )
    for path in state_dir.iterdir():
        if path.name.startswith(layout.DB_FILE) or path.name.endswith(layout.TMP_SUFFIX):
            path.unlink()
    layout.create_db(db_path)
    (state_dir / layout.SNAPSHOT_DIR).mkdir(exist_ok=True)
    layout.write_format(state_dir, host)


def _holds_state(db_path: Path) -> bool:
    """Whether journal.db (with no format file beside it) holds anything worth keeping;
    an initialisation killed before or while creating it leaves it empty, or schema-less."""
    if db_path.stat().st_size == 0:
        return False
    try:
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
            if not {"journal", "snapshots"} <= tables:
                return bool(tables)  # none of our tables yet: the schema never committed
            journal = db.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
            snapshots = db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0]
    except sqlite3.DatabaseError:
        return True  # unreadable: assume it holds something worth keeping
    return bool(journal or snapshots)


def _rebuild(
    state_dir: Path, recovery: Recovery, registry: Registry, config: DurabilityConfig
) -> tuple[dict[str, SnapshotRow], list[str]]:
    """--discard-corrupt-tail: a new journal.db holding snapshots of what was recovered.

    It is built completely beside the old one (snapshot files written, index
    committed) before the old database is moved aside and the new one renamed
    into place; a crash in between is finished by the next start (see
    _finish_rebuild). After the switch, every snapshot file the new index does
    not name (the old index's, damaged ones, ones the journal lost track of)
    is moved aside with the old database, never deleted.
    Returns the new index and the lines that report what was dropped.
    """
    db_path = state_dir / layout.DB_FILE
    fresh = state_dir / layout.REBUILD_FILE
    fresh.unlink(missing_ok=True)
    layout.create_db(fresh, recovery.next_seq)
    with contextlib.closing(layout.connect(fresh, "power")) as db:
        journal = Journal(db, recovery.next_seq, lambda: registry.limits.max_tables_per_vm)
        snapshots = state_dir / layout.SNAPSHOT_DIR
        snapshotter = Snapshotter(db, snapshots, registry, journal, config, {})
        snapshotter.checkpoint(everything=True, prune=False)
    aside = state_dir / time.strftime("damaged-%Y%m%dT%H%M%S", time.gmtime())
    aside.mkdir(exist_ok=True)
    for path in recovery.damaged_files:  # useless to the old database as to the new one
        if path.exists():
            shutil.move(path, aside / path.name)
    for path in sorted(state_dir.iterdir()):
        if path.name in (layout.DB_FILE, f"{layout.DB_FILE}-wal", f"{layout.DB_FILE}-shm"):
            shutil.move(path, aside / path.name)
    layout.fsync_dir(aside)
    fresh.rename(db_path)
    layout.fsync_dir(state_dir)
    named = {row.file for row in snapshotter.rows.values()}
    for path in sorted(snapshots.iterdir()):  # the old index's files go with the old index
        if path.name.endswith(SUFFIX + layout.TMP_SUFFIX):
            path.unlink()
        elif path.name.endswith(SUFFIX) and path.name not in named:
            shutil.move(path, aside / path.name)
    layout.fsync_dir(aside)
    lines = [f"DISCARDED (--discard-corrupt-tail): {damage}" for damage in recovery.damage]
    if recovery.dropped_records:
        dropped = (
            "an unknown number of journal records"
            if recovery.dropped_records < 0
            else count(recovery.dropped_records, "journal record")
        )
        lines.append(f"dropped {dropped} from the first damaged one on")
    if recovery.lost_vms:
        lines.append(f"lost VMs (damaged snapshot): {', '.join(recovery.lost_vms)}")
    lines.append(f"the damaged files were moved to {aside}; a new journal was started")
    return snapshotter.rows, lines


def _finish_rebuild(db_path: Path) -> None:
    fresh = db_path.with_name(layout.REBUILD_FILE)
    if fresh.exists() and not db_path.exists():
        fresh.rename(db_path)
    elif fresh.exists():
        fresh.unlink()  # the rebuild did not get as far as moving the old one aside


__all__ = ["StateError", "Store", "open_server_store", "open_store"]
