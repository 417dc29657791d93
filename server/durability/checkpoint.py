"""Checkpoints: snapshot every changed VM, then truncate the journal behind them.

Consistency. The snapshot of one VM is taken under that VM's lock, together
with the journal's next sequence number S: every record of that VM below S
is in the snapshot, and none at or above it. Other VMs keep running; each
is held only while its own snapshot is taken (unchanged VMs are not
re-snapshotted: their index row just moves up to S). VM creation and
deletion wait while the VMs are being snapshotted (the journal's
`lifecycle` lock), so the set of VMs is the set that existed at the cut C
read first; every VM's S is at least C, and records below C belong either to
a snapshotted VM (covered) or to a VM deleted before C (gone). So the
journal is truncated below C.

Durability of the switch. Snapshot files are written and fsynced first;
then everything journaled so far is committed; then one transaction
(always with synchronous=FULL, whatever the level) replaces the index rows,
deletes the journal below C and records C as `truncated_below`; only after
it are files no longer named by the index deleted. A crash at any point
leaves either the old index with its files and journal, or the new one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from server.durability.config import DurabilityConfig
from server.durability.journal import Journal, JournalStats
from server.durability.layout import set_meta, synchronous
from server.durability.snapshots import SUFFIX, SnapshotRow, take, write
from server.registry import Registry

log = logging.getLogger("kvmmu.durability")


@dataclass(frozen=True, slots=True)
class CheckpointReport:
    taken: int  # VMs snapshotted
    kept: int  # unchanged VMs whose snapshot still holds
    cut: int  # the journal now starts here
    truncated: int  # journal records deleted
    seconds: float


class Snapshotter:
    """Takes checkpoints on demand, on its triggers (a background thread) and at close."""

    def __init__(
        self,
        db: sqlite3.Connection,
        snapshot_dir: Path,
        registry: Registry,
        journal: Journal,
        config: DurabilityConfig,
        rows: dict[str, SnapshotRow],
    ) -> None:
        self.db = db
        self.snapshot_dir = snapshot_dir
        self.registry = registry
        self.journal = journal
        self.config = config
        self.rows = dict(rows)
        self.checkpoints = 0
        self._lock = threading.Lock()  # one checkpoint at a time
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    # --- triggers ----------------------------------------------------------------

    def due(self, stats: JournalStats) -> bool:
        cfg = self.config
        return bool(
            (cfg.snapshot_records and stats.records_since_snapshot >= cfg.snapshot_records)
            or (cfg.snapshot_bytes and stats.bytes_since_snapshot >= cfg.snapshot_bytes)
        )

    def on_commit(self, stats: JournalStats) -> None:
        """Called by the journal after each commit (under its commit lock: only signal)."""
        if self.due(stats):
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kvmmu-snapshot", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.config.snapshot_seconds or None
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            if self._closing:
                return
            if self.journal.failure is not None:
                return
            if self.journal.stats.records_since_snapshot == 0:
                continue
            try:
                report = self.checkpoint()
            except Exception:
                log.exception("snapshot failed; the journal keeps every change meanwhile")
                continue
            log.info(
                "snapshot: %d VMs written, %d unchanged, journal truncated below %d "
                "(%d records) in %.3f s",
                report.taken,
                report.kept,
                report.cut,
                report.truncated,
                report.seconds,
            )

    def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    # --- the checkpoint ------------------------------------------------------------

    def checkpoint(self, *, everything: bool = False, prune: bool = True) -> CheckpointReport:
        """Snapshot every VM changed since its last snapshot (all with `everything`);
        `prune` deletes the snapshot files the new index no longer names."""
        with self._lock:
            start = time.perf_counter()
            stats = self.journal.stats
            records, size = stats.records_since_snapshot, stats.bytes_since_snapshot
            cut, taken, kept = self._cut(everything)
            rows = dict(kept)
            for vm_id, seq, data, meta in taken:
                rows[vm_id] = write(self.snapshot_dir, vm_id, seq, data, meta)
            self.journal.flush()  # every record below every S is committed first
            with self.journal.exclusive():
                truncated = self._switch(rows, cut)
            self.rows = rows
            stats.records_since_snapshot -= records  # what came in meanwhile counts next time
            stats.bytes_since_snapshot -= size
            if prune:
                self.remove_unreferenced()
            self.checkpoints += 1
            return CheckpointReport(
                len(taken), len(kept), cut, truncated, time.perf_counter() - start
            )

    def _cut(
        self, everything: bool
    ) -> tuple[int, list[tuple[str, int, bytes, str]], dict[str, SnapshotRow]]:
        journal = self.journal
        taken: list[tuple[str, int, bytes, str]] = []
        kept: dict[str, SnapshotRow] = {}
        with journal.lifecycle:
            cut = journal.next_seq
            for entry in self.registry.entries():
                with entry.lock:
                    if entry.deleted:
                        continue
                    vm_id = entry.vm.id
                    seq = journal.next_seq
                    old = self.rows.get(vm_id)
                    unchanged = old is not None and journal.last_seq.get(vm_id, -1) < old.seq
                    if unchanged and not everything and old is not None:
                        kept[vm_id] = replace(old, seq=seq)
                        continue
                    data, meta = take(entry)
                taken.append((vm_id, seq, data, meta))
        return cut, taken, kept

    def _switch(self, rows: dict[str, SnapshotRow], cut: int) -> int:
        db = self.db
        db.execute("PRAGMA synchronous=FULL")
        try:
            db.execute("BEGIN")
            db.execute("DELETE FROM snapshots")
            db.executemany(
                "INSERT INTO snapshots (vm_id, seq, file, size, sha256, entry, crc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [row.as_row() for row in rows.values()],
            )
            truncated = db.execute("DELETE FROM journal WHERE seq < ?", (cut,)).rowcount
            set_meta(db, "truncated_below", cut)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.execute(f"PRAGMA synchronous={synchronous(self.config.level)}")
        return int(truncated)

    def remove_unreferenced(self) -> None:
        names = {row.file for row in self.rows.values()}
        for path in self.snapshot_dir.iterdir():
            if path.name not in names and (path.suffix == SUFFIX or path.name.endswith(".tmp")):
                path.unlink(missing_ok=True)
