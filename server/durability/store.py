"""The durable store of a server: open (initialise or recover), journal, snapshot, close.

`open_store` runs before the server serves: it locks the state directory,
checks its format version and host configuration, recovers the registry
(snapshots + journal tail), and then attaches the journal to the registry,
so every change from then on is durable before it is acknowledged.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from server.config import ServerConfig
from server.durability import layout
from server.durability.checkpoint import Snapshotter
from server.durability.config import DurabilityConfig
from server.durability.errors import CorruptState, StateError, StateIncompatible
from server.durability.journal import Journal
from server.durability.layout import HostRecord
from server.durability.recovery import Recovery, count, recover
from server.durability.snapshots import SnapshotRow
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
    lock: IO[str]
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
        """Graceful shutdown (after the last call): a final snapshot, then release the dir."""
        self.snapshotter.stop()
        try:
            if self.journal.failure is None:
                self.journal.flush()
                if self.journal.stats.records_since_snapshot or self.recovery.replayed:
                    report = self.snapshotter.checkpoint()
                    log.info(
                        "final snapshot: %d VMs written, %d unchanged, in %.3f s",
                        report.taken,
                        report.kept,
                        report.seconds,
                    )
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                log.error("no final snapshot: the journal failed (%s)", self.journal.failure)
        finally:
            self.db.close()
            self.lock.close()


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
        state_dir.mkdir(parents=True, exist_ok=True)
        lock = layout.lock_dir(state_dir)
    except OSError as exc:
        raise StateError(f"{state_dir}: cannot be used as the state directory ({exc})") from exc
    try:
        return _open(state_dir, config, registry, host, lock)
    except BaseException:
        lock.close()
        raise


def _open(
    state_dir: Path,
    config: DurabilityConfig,
    registry: Registry,
    host: HostRecord,
    lock: IO[str],
) -> Store:
    db_path = state_dir / layout.DB_FILE
    snapshot_dir = state_dir / layout.SNAPSHOT_DIR
    _finish_rebuild(db_path)
    created = not (state_dir / layout.FORMAT_FILE).exists()
    if created:
        _initialise(state_dir, host)
    else:
        _, recorded = layout.read_format(state_dir)
        layout.check_host(state_dir, recorded, host)
    if not db_path.exists():
        raise CorruptState(db_path, "missing: the format file says this directory holds state")
    snapshot_dir.mkdir(exist_ok=True)
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
    store = Store(state_dir, config, db, journal, snapshotter, recovery, lock, created, notes)
    for line in store.describe():
        log.info("%s", line)
    return store


def _connect(db_path: Path, config: DurabilityConfig) -> sqlite3.Connection:
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
        raise CorruptState(db_path, f"schema version {version}, expected {layout.SCHEMA_VERSION}")
    return db


_OURS = {layout.LOCK_FILE, layout.DB_FILE, layout.SNAPSHOT_DIR}


def _initialise(state_dir: Path, host: HostRecord) -> None:
    """A new state directory; the format file is written last (it marks it complete)."""
    db_path = state_dir / layout.DB_FILE
    names = {p.name for p in state_dir.iterdir()}
    foreign = {n for n in names if n not in _OURS and not n.startswith(layout.DB_FILE)}
    if foreign:
        raise StateIncompatible(
            f"{state_dir} holds files ({', '.join(sorted(foreign)[:5])}) but no "
            f"{layout.FORMAT_FILE}: it is not a kvmmu state directory; give an empty or new "
            "directory"
        )
    if db_path.exists() and _holds_state(db_path):
        raise CorruptState(
            state_dir / layout.FORMAT_FILE,
            f"missing, but {layout.DB_FILE} holds state: the format and host it was recorded "
            "with are unknown",
        )
    for path in state_dir.iterdir():  # an initialisation interrupted before it finished
        if path.name.startswith(layout.DB_FILE):
            path.unlink()
    layout.create_db(db_path)
    (state_dir / layout.SNAPSHOT_DIR).mkdir(exist_ok=True)
    layout.write_format(state_dir, host)


def _holds_state(db_path: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(db_path)) as db:
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
    _finish_rebuild). Old snapshot files are pruned only after the switch.
    Returns the new index and the lines that report what was dropped.
    """
    db_path = state_dir / layout.DB_FILE
    fresh = db_path.with_name(layout.DB_FILE + ".new")
    fresh.unlink(missing_ok=True)
    layout.create_db(fresh, recovery.next_seq)
    with contextlib.closing(layout.connect(fresh, "power")) as db:
        journal = Journal(db, recovery.next_seq, lambda: registry.limits.max_tables_per_vm)
        snapshots = state_dir / layout.SNAPSHOT_DIR
        snapshotter = Snapshotter(db, snapshots, registry, journal, config, {})
        snapshotter.checkpoint(everything=True, prune=False)
    aside = state_dir / time.strftime("damaged-%Y%m%dT%H%M%S", time.gmtime())
    aside.mkdir(exist_ok=True)
    for path in sorted(state_dir.iterdir()):
        if path.name in (layout.DB_FILE, f"{layout.DB_FILE}-wal", f"{layout.DB_FILE}-shm"):
            shutil.move(path, aside / path.name)
    layout.fsync_dir(aside)
    fresh.rename(db_path)
    layout.fsync_dir(state_dir)
    for path in recovery.damaged_files:
        if path.exists():
            shutil.move(path, aside / path.name)
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
    fresh = db_path.with_name(layout.DB_FILE + ".new")
    if fresh.exists() and not db_path.exists():
        fresh.rename(db_path)
    elif fresh.exists():
        fresh.unlink()  # the rebuild did not get as far as moving the old one aside


__all__ = ["StateError", "Store", "open_server_store", "open_store"]
