"""The state directory: its format file, its lock, the SQLite database and its schema.

    <state-dir>/
      kvmmu-state.json   format name and version, the host configuration the
                         state was recorded on, and a SHA-256 of both; written
                         once, last, when the directory is initialised
      LOCK               holds the serving process's pid; it and the directory
                         itself are flock()ed while a server uses the directory
      journal.db         SQLite (WAL mode): the journal, the snapshot index, meta
      journal.db-wal     part of the journal: SQLite's write-ahead log holds the
                         latest commits until they are checkpointed into journal.db
      snapshots/         one file per VM snapshot (mmu.snapshot bytes)
      damaged-<time>/    what --discard-corrupt-tail moved aside

Format versions: FORMAT_VERSION is written; every version in READABLE is
read (older ones are converted when opened); anything newer is refused with
the reason. Version 1 is the first.

Before a server takes the lock it decides whether the directory is a state
directory, a new one (empty, or holding only what an interrupted
initialisation leaves), or someone else's (refused, left untouched), and
checks that it can write everything it will write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from server.durability.codec import text_crc
from server.durability.config import Level
from server.durability.errors import CorruptState, StateError, StateIncompatible, StateLocked

FORMAT_NAME: Final = "kvmmu-state"
FORMAT_VERSION: Final = 1
READABLE: Final = frozenset({1})
FORMAT_FILE: Final = "kvmmu-state.json"
LOCK_FILE: Final = "LOCK"
DB_FILE: Final = "journal.db"
SNAPSHOT_DIR: Final = "snapshots"
SCHEMA_VERSION: Final = 1  # PRAGMA user_version of journal.db
WAL_SIZE_LIMIT: Final = 64 << 20
TMP_SUFFIX: Final = ".tmp"  # write_durably's temporary files
REBUILD_FILE: Final = DB_FILE + ".new"  # --discard-corrupt-tail's journal being built
# What a server itself leaves in a directory whose initialisation was interrupted
# (before the format file was renamed into place).
INIT_LEFTOVERS: Final = frozenset(
    {LOCK_FILE, DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal",
     REBUILD_FILE, SNAPSHOT_DIR, FORMAT_FILE + TMP_SUFFIX}
)  # fmt: skip

SCHEMA: Final = """
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY,   -- commit order = apply order
    vm_id TEXT NOT NULL,
    op TEXT NOT NULL,
    record BLOB NOT NULL,      -- server.durability.codec
    crc INTEGER NOT NULL       -- CRC-32 of seq, vm_id, op, record
);
CREATE TABLE snapshots (
    vm_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,      -- the snapshot holds every journal record of the VM below seq
    file TEXT NOT NULL,        -- under snapshots/
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    entry TEXT NOT NULL,       -- JSON: what the server keeps beside the model
    crc INTEGER NOT NULL
);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    crc INTEGER NOT NULL
);
"""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write a new file atomically and durably: temporary file, fsync, rename, fsync dir.

    On any failure (disk full, ...) the temporary file is removed, so a failed
    write does not keep the space it took."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@dataclass(frozen=True, slots=True)
class HostRecord:
    """The host configuration a state was recorded on: profile, overrides, resolved fields."""

    profile: str
    overrides: tuple[tuple[str, str], ...]
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "overrides": [list(o) for o in self.overrides],
            "config": self.config,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> HostRecord:
        overrides = tuple((str(k), str(v)) for k, v in data["overrides"])
        return HostRecord(str(data["profile"]), overrides, dict(data["config"]))

    def describe(self) -> str:
        sets = "".join(f" --host-set {k}={v}" for k, v in self.overrides)
        return f"--profile {self.profile}{sets}"


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_format(state_dir: Path, host: HostRecord) -> None:
    body = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "host": host.to_json()}
    document = {**body, "sha256": _digest(body)}
    write_durably(state_dir / FORMAT_FILE, json.dumps(document, indent=2).encode() + b"\n")


def read_format(state_dir: Path) -> tuple[int, HostRecord]:
    """The directory's format version and host record; refuses unknown or damaged ones."""
    path = state_dir / FORMAT_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorruptState(path, f"cannot be read ({exc.strerror})") from exc
    try:
        document = json.loads(raw)
        body = {k: v for k, v in document.items() if k != "sha256"}
        stored = document["sha256"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptState(path, f"not a readable format file ({exc})") from exc
    if body.get("format") != FORMAT_NAME:
        raise StateIncompatible(
            f"{path}: format {body.get('format')!r} is not {FORMAT_NAME!r}; "
            "this is not a kvmmu state directory"
        )
    version = body.get("version")
    if not isinstance(version, int):
        raise CorruptState(path, f"format version {version!r} is not a number")
    if version not in READABLE:
        newest = max(READABLE)
        if version > newest:
            raise StateIncompatible(
                f"{path}: state format version {version} was written by a newer kvmmu; this "
                f"server reads {readable_versions()}. Run a kvmmu that knows "
                f"format {version}, or start with another --state-dir"
            )
        raise StateIncompatible(
            f"{path}: state format version {version} is older than this server can convert "
            f"(it reads {readable_versions()}); open it with an older kvmmu "
            "and let it write a snapshot, or start with another --state-dir"
        )
    if _digest(body) != stored:
        raise CorruptState(path, "SHA-256 mismatch: the format file was changed or damaged")
    try:
        return version, HostRecord.from_json(body["host"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptState(path, f"no usable host record ({exc})") from exc


def readable_versions() -> str:
    """The versions this server reads, in words: 'version 1', 'versions 1 to 3'."""
    low, high = min(READABLE), max(READABLE)
    return f"version {low}" if low == high else f"versions {low} to {high}"


def check_host(state_dir: Path, recorded: HostRecord, current: HostRecord) -> None:
    """Refuse to replay a state on another host configuration (it would build another state)."""
    if recorded.config == current.config:
        return
    differ = sorted(
        name
        for name in set(recorded.config) | set(current.config)
        if recorded.config.get(name) != current.config.get(name)
    )
    details = ", ".join(
        f"{name} {recorded.config.get(name)!r} (recorded) vs {current.config.get(name)!r}"
        for name in differ
    )
    raise StateIncompatible(
        f"{state_dir} was recorded on another host configuration ({recorded.describe()}) than "
        f"this server's ({current.describe()}): {details}. Replaying its journal on this host "
        "would build a different state; start with the recorded host configuration, or use "
        "another --state-dir"
    )


class DirLock:
    """This process's hold on a state directory: flock() on the directory itself and on LOCK.

    The directory lock is the one that counts: deleting LOCK while a server
    runs cannot let a second server in, since the directory's inode is the
    same. LOCK holds the pid for the message a second server prints (and is
    what servers before this lock existed took).
    """

    def __init__(self, state_dir: Path) -> None:
        self._dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
        self._handle: IO[str] | None = None
        try:
            try:
                fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _in_use(state_dir) from None
            handle = open(state_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held for the process)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a kvmmu-server from before the directory lock
                handle.close()
                raise _in_use(state_dir) from None
            self._handle = handle
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the directory (also what the process dying does)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1


def _in_use(state_dir: Path) -> StateLocked:
    try:
        holder = (state_dir / LOCK_FILE).read_text().strip() or "unknown"
    except OSError:
        holder = "unknown"
    return StateLocked(
        f"{state_dir} is in use by another kvmmu-server (pid {holder}); stop it, or start "
        "with another --state-dir"
    )


def lock_dir(state_dir: Path) -> DirLock:
    """Take the directory's lock for this process (released by close() or when we die)."""
    return DirLock(state_dir)


def is_new(state_dir: Path) -> bool:
    """Whether `state_dir` (an existing directory) is to be initialised.

    True when it has no format file and holds nothing, or only what an
    interrupted initialisation of ours leaves; False for a state directory.
    Anything else is refused before the server writes a byte into it.
    """
    if (state_dir / FORMAT_FILE).exists():
        return False
    foreign = sorted(p.name for p in state_dir.iterdir() if p.name not in INIT_LEFTOVERS)
    if foreign:
        raise StateIncompatible(
            f"{state_dir} holds files ({', '.join(foreign[:5])}) but no {FORMAT_FILE}: it is "
            "not a kvmmu state directory; give an empty or new directory"
        )
    return True


def check_writable(state_dir: Path) -> None:
    """Refuse to start unless this process can write everything a server writes.

    Checked up front because the first write is otherwise the first change a
    client makes, which would then fail (and SQLite reports a directory it
    cannot create its -wal file in as a damaged database).
    """
    _check_dir(state_dir, "the journal, its WAL file and the lock are created there")
    for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
        path = state_dir / name
        if path.exists() or path.is_symlink():
            _check_file(path)
    snapshots = state_dir / SNAPSHOT_DIR
    if snapshots.exists() or snapshots.is_symlink():
        _check_dir(snapshots, "VM snapshots are written there")


_NOT_WRITABLE: Final = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def _refuse(path: Path, why: str) -> StateError:
    return StateError(f"{path}: not writable by this server (uid {os.geteuid()}): {why}")


def _check_dir(path: Path, purpose: str) -> None:
    if not path.is_dir():
        raise StateError(f"{path}: not a directory; {purpose}")
    tmpfile = getattr(os, "O_TMPFILE", 0)  # Linux
    if tmpfile:
        try:  # creating an unnamed file is the real test (ACLs, read-only mounts, ...)
            os.close(os.open(path, tmpfile | os.O_WRONLY, 0o600))
            return
        except OSError as exc:
            if exc.errno in _NOT_WRITABLE:
                raise _refuse(path, f"{exc.strerror}; {purpose}") from exc
            # else: a file system without O_TMPFILE; ask for the permission instead
    if not os.access(path, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        raise _refuse(path, f"no write permission; {purpose}")


def _check_file(path: Path) -> None:
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        why = exc.strerror if exc.errno in _NOT_WRITABLE else f"cannot open it ({exc.strerror})"
        raise _refuse(path, f"{why}; every change is written to it") from exc


def synchronous(level: Level) -> str:
    """SQLite's synchronous setting for a durability level (in WAL mode).

    NORMAL: a commit is written to the WAL file (the OS page cache) but not
    synced; it survives the process dying, not the machine. FULL: the WAL is
    fsynced at every commit, before the commit returns.
    """
    return "FULL" if level == "power" else "NORMAL"


def connect(path: Path, level: Level) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal mode."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous(level)}")
    db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")  # the WAL file after a reset
    return db


def set_meta(db: sqlite3.Connection, key: str, value: object) -> None:
    text = str(value)
    db.execute(
        "INSERT OR REPLACE INTO meta (key, value, crc) VALUES (?, ?, ?)",
        (key, text, text_crc(key, text)),
    )


def create_db(path: Path, truncated_below: int = 1) -> None:
    """A new, empty journal.db whose journal starts at `truncated_below`."""
    with contextlib.closing(connect(path, "power")) as db:
        db.execute("BEGIN")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        set_meta(db, "truncated_below", truncated_below)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    fsync_dir(path.parent)
