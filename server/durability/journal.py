"""The journal: operation records appended in apply order, committed in groups.

Ordering. `append` runs while the op's locks are still held (the VM's lock;
for CreateVm and DeleteVm also the registry lock), and takes the next
sequence number there. Two ops on one VM are therefore numbered in the order
they took effect, and a VM's creation is numbered before anything done to
it; ops on different VMs commute. Records are committed strictly in sequence
order, so the journal on disk is always a prefix of the apply order, which is
what makes a replay of it a state the server really was in.

Group commit. `wait(seq)` is called after the locks are released and
before the reply is sent. The first waiter to take the commit lock becomes
the writer: it takes every pending record (its own and those appended by
other threads meanwhile), writes them in one SQLite transaction, commits
(with the "power" level: one fsync of the WAL for the whole group) and
releases the lock; each waiter then finds its record durable and returns.
Under load, many records share one commit; a single client pays no thread
hand-off.

Rejected ops. The model validates before it changes anything, so an op that
raised a ModelError changed nothing and is not journaled (replay never sees
it, as the client saw only an error). Exceptions that can leave a change
behind (KVM BUG() conditions found mid-walk, the page-table pool running
out mid-operation, any unexpected exception) are journaled with `failed`
set: the model is deterministic, so the replay raises at the same point
and leaves the same partial change. Ops that change state and report a
failure as their result (a MOVE refused after zapping, ENOMEM fault
outcomes) are ordinary successful ops and replay identically.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

from mmu.errors import LimitExceeded, ModelError
from mmu.tdp_mmu import KvmBug
from server import ops
from server.durability.codec import Record, encode, row_crc
from server.durability.errors import StoreFailed
from server.errors import ResourceExists, ResourceNotFound

# LimitExceeded raised by the model's table pool in the middle of an operation.
POOL_LIMITS: Final = frozenset({"max_tables", "table_serials"})
INSERT: Final = "INSERT INTO journal (seq, vm_id, op, record, crc) VALUES "
ROW: Final = "(?, ?, ?, ?, ?)"
ONE_STATEMENT: Final = 512  # rows inserted by one statement (SQLite allows 32766 parameters)


def may_have_changed(exc: BaseException) -> bool:
    """Whether an op that raised `exc` may have left part of its change behind."""
    if isinstance(exc, ResourceNotFound | ResourceExists):
        return False  # the registry refused it before the model ran
    if isinstance(exc, KvmBug):
        return True
    if isinstance(exc, LimitExceeded):
        return exc.limit in POOL_LIMITS
    return not isinstance(exc, ModelError)


@dataclass(frozen=True, slots=True)
class _Pending:
    seq: int
    record: Record


@dataclass(slots=True)
class JournalStats:
    records: int = 0  # committed since the store opened
    commits: int = 0  # transactions (one sync each with the "power" level)
    bytes: int = 0
    records_since_snapshot: int = 0
    bytes_since_snapshot: int = 0


class Journal:
    """What `server.apply` records every change to (the registry's `journal`)."""

    def __init__(
        self,
        db: sqlite3.Connection,
        next_seq: int,
        max_tables: Callable[[], int],
    ) -> None:
        self.db = db
        self.stats = JournalStats()
        self.last_seq: dict[str, int] = {}  # vm_id -> its newest record's sequence
        self.lifecycle = threading.Lock()  # VM creation and deletion vs. snapshots
        self._max_tables = max_tables
        self.on_commit: Callable[[JournalStats], None] | None = None  # after each commit
        self.on_failure: Callable[[BaseException], None] | None = None  # once, on failure
        self._no_guard = contextlib.nullcontext()
        self._lock = threading.Lock()  # the pending list and the sequence counter
        self._pending: list[_Pending] = []
        self._next = next_seq
        self._commit_lock = threading.Lock()  # one writer of the database at a time
        self._durable = next_seq - 1
        self._failure: BaseException | None = None

    # --- the registry's journal protocol -------------------------------------

    def guard(self, op: ops.Op[Any]) -> AbstractContextManager[object]:
        """Held around a whole CreateVm or DeleteVm, so a snapshot sees a fixed set of VMs."""
        if isinstance(op, ops.CreateVm | ops.DeleteVm):
            return self.lifecycle
        return self._no_guard

    def append(self, op: ops.Op[Any], error: BaseException | None = None) -> int | None:
        """Number and queue the record of `op`, which just took effect (or raised `error`).

        Called with the op's locks held. Returns the sequence to wait for, or
        None when a rejected op is not journaled.
        """
        failed = None
        if error is not None:
            if not may_have_changed(error):
                return None
            failed = type(error).__name__
        max_tables = self._max_tables() if isinstance(op, ops.CreateVm) else None
        with self._lock:
            if self._failure is not None:
                raise StoreFailed(self._failure)
            seq = self._next
            self._next += 1
            self._pending.append(_Pending(seq, Record(op, failed, max_tables)))
            self.last_seq[op.vm_id] = seq
        return seq

    def wait(self, seq: int) -> None:
        """Return once record `seq` (and every record before it) is committed."""
        if self._durable >= seq:
            return
        with self._commit_lock:
            if self._durable < seq:
                self._commit_pending()

    # --- for the store -------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The sequence the next record gets (take it under a VM's lock to cut that VM)."""
        with self._lock:
            return self._next

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def flush(self) -> None:
        """Commit everything appended so far."""
        with self._commit_lock:
            self._commit_pending()

    def exclusive(self) -> AbstractContextManager[object]:
        """The database to itself (between group commits), for snapshot bookkeeping."""
        return self._commit_lock

    def _insert(self, rows: list[tuple[int, str, str, bytes, int]]) -> None:
        """One transaction. A single statement in autocommit mode is its own transaction:
        one call into SQLite (one GIL hand-off) where BEGIN, INSERT, COMMIT would be three."""
        if len(rows) <= ONE_STATEMENT:
            self.db.execute(INSERT + ", ".join([ROW] * len(rows)), [v for r in rows for v in r])
            return
        self.db.execute("BEGIN")
        self.db.executemany(INSERT + ROW, rows)
        self.db.execute("COMMIT")

    def _commit_pending(self) -> None:
        if self._failure is not None:
            raise StoreFailed(self._failure)
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        rows = []
        size = 0
        for item in batch:
            op = item.record.op
            data = encode(item.record)
            size += len(data)
            crc = row_crc(item.seq, op.vm_id, op.name, data)
            rows.append((item.seq, op.vm_id, op.name, data, crc))
        try:
            self._insert(rows)
        except Exception as exc:
            with self._lock:
                self._failure = exc
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            if self.on_failure is not None:
                self.on_failure(exc)
            raise StoreFailed(exc) from exc
        self._durable = batch[-1].seq
        stats = self.stats
        stats.records += len(rows)
        stats.commits += 1
        stats.bytes += size
        stats.records_since_snapshot += len(rows)
        stats.bytes_since_snapshot += size
        if self.on_commit is not None:
            self.on_commit(stats)
