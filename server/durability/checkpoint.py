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

Durability of the switch. Everything journaled so far is committed first
(so every record below each S is in the journal before a file claiming to
hold it exists: recovery relies on that to tell a lost journal tail from an
interrupted checkpoint); then the snapshot files are written and fsynced;
then one transaction (always with synchronous=FULL, whatever the level)
replaces the index rows, deletes the journal below C and records C as
`truncated_below`; only after it are files no longer named by the index
deleted. A crash at any point leaves either the old index with its files and
journal, or the new one. A checkpoint that fails (disk full, ...) removes
the files it wrote and leaves the old index in force.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from server.durability.config import DurabilityConfig
from server.durability.journal import Journal, JournalStats
from server.durability.layout import TMP_SUFFIX, set_meta, synchronous
from server.durability.recovery import count
from server.durability.snapshots import SnapshotRow, file_name, parse_file_name, take, write
from server.registry import Registry

log = logging.getLogger("kvmmu.durability")
RETRY_SECONDS = 10.0  # after a failed checkpoint, before the triggers are heeded again


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
        self._stopping = threading.Event()
        self.retry_seconds = RETRY_SECONDS
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
        """The snapshot thread: lives until stop(); any error is logged, never fatal."""
        while not self._stopping.is_set():
            try:
                if not self._step():
                    return
            except Exception as exc:
                if isinstance(exc, OSError | sqlite3.Error):
                    log.error(
                        "snapshot failed (%s); the journal keeps every change meanwhile, "
                        "next attempt in %g s or later",
                        exc,
                        self.retry_seconds,
                    )
                else:  # a bug: say where
                    log.exception("snapshot failed; the journal keeps every change meanwhile")
                self._stopping.wait(self.retry_seconds)

    def _step(self) -> bool:
        """Wait for a trigger and take a checkpoint if anything changed; False: stop."""
        self._wake.wait(self.config.snapshot_seconds or None)
        self._wake.clear()
        if self._stopping.is_set() or self.journal.failure is not None:
            return False
        if self.journal.stats.records_since_snapshot == 0:
            return True
        report = self.checkpoint()
        log.info(
            "snapshot: %s written, %s unchanged, journal truncated below %d (%s) in %.3f s",
            count(report.taken, "VM"),
            count(report.kept, "VM"),
            report.cut,
            count(report.truncated, "record"),
            report.seconds,
        )
        return True

    def stop(self) -> None:
        self._stopping.set()
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
            self.journal.flush()  # every record below every S is committed first
            rows = dict(kept)
            written: list[Path] = []
            try:
                for vm_id, seq, data, meta in taken:
                    path = self.snapshot_dir / file_name(vm_id, seq)
                    existed = path.exists()
                    rows[vm_id] = write(self.snapshot_dir, vm_id, seq, data, meta)
                    if not existed:
                        written.append(path)
            except BaseException:
                for path in written:  # named by no index: the old one stays in force
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise
            # A failed switch keeps its files: whether a failed COMMIT reached the WAL is
            # not certain, and the next checkpoint's prune removes them if it did not.
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
        """Delete snapshot files the index does not name (and temporary files).

        Never one whose sequence is beyond the journal's: that would be the
        only copy of records the journal lost (recovery refuses to start on it).
        """
        names = {row.file for row in self.rows.values()}
        end = self.journal.next_seq
        for path in self.snapshot_dir.iterdir():
            if path.name in names:
                continue
            if path.name.endswith(TMP_SUFFIX):
                path.unlink(missing_ok=True)
                continue
            parsed = parse_file_name(path.name)
            if parsed is None:
                continue  # not ours
            if parsed[1] > end:
                log.warning("%s is beyond the journal (record %d); kept", path, end - 1)
                continue
            path.unlink(missing_ok=True)
