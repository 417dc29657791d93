"""The state directory: its format file, its lock, the SQLite database and its schema.

    <state-dir>/
      kvmmu-state.json   format name and version, the host configuration the
                         state was recorded on, and a SHA-256 of both; written
                         once, last, when the directory is initialised
      LOCK               flock()ed by the serving process (holds its pid)
      journal.db         SQLite (WAL mode): the journal, the snapshot index, meta
      snapshots/         one file per VM snapshot (mmu.snapshot bytes)
      damaged-<time>/    what --discard-corrupt-tail moved aside

Format versions: FORMAT_VERSION is written; every version in READABLE is
read (older ones are converted when opened); anything newer is refused with
the reason. Version 1 is the first.
"""

from __future__ import annotations

import contextlib
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
from server.durability.errors import CorruptState, StateIncompatible, StateLocked

FORMAT_NAME: Final = "kvmmu-state"
FORMAT_VERSION: Final = 1
READABLE: Final = frozenset({1})
FORMAT_FILE: Final = "kvmmu-state.json"
LOCK_FILE: Final = "LOCK"
DB_FILE: Final = "journal.db"
SNAPSHOT_DIR: Final = "snapshots"
SCHEMA_VERSION: Final = 1  # PRAGMA user_version of journal.db
WAL_SIZE_LIMIT: Final = 64 << 20

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
    """Write a new file atomically and durably: temporary file, fsync, rename, fsync dir."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
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
        document = json.loads(path.read_bytes())
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
                f"server reads versions {min(READABLE)} to {newest}. Run a kvmmu that knows "
                f"format {version}, or start with another --state-dir"
            )
        raise StateIncompatible(
            f"{path}: state format version {version} is older than this server can convert "
            f"(it reads versions {min(READABLE)} to {newest}); open it with an older kvmmu "
            "and let it write a snapshot, or start with another --state-dir"
        )
    if _digest(body) != stored:
        raise CorruptState(path, "SHA-256 mismatch: the format file was changed or damaged")
    try:
        return version, HostRecord.from_json(body["host"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptState(path, f"no usable host record ({exc})") from exc


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


def lock_dir(state_dir: Path) -> IO[str]:
    """Take the directory's lock for this process (released when the file closes or we die)."""
    handle = open(state_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held for the process's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StateLocked(
            f"{state_dir} is in use by another kvmmu-server (pid {holder}); stop it, or start "
            "with another --state-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


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
