"""VM snapshots on disk: one file per VM, indexed (with its SHA-256) in journal.db.

A snapshot file holds `mmu.snapshot.snapshot_vm` bytes. Its index row names
the file, its size and SHA-256, the journal sequence it covers (every record
of that VM below `seq` is in it) and what the server keeps beside the model
(creation time, initial generation); a CRC-32 guards the row itself. Files
are written and fsynced before any index row names them, so an index row
never points at a file that could be torn by a crash.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmu.host import Host
from mmu.snapshot import restore_vm, snapshot_vm
from server.durability.codec import text_crc
from server.durability.errors import CorruptState
from server.durability.layout import write_durably
from server.registry import VmEntry

SUFFIX = ".snap"


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    vm_id: str
    seq: int
    file: str
    size: int
    sha256: str
    entry: str  # JSON: create_time_ns, initial_generation

    def crc(self) -> int:
        return text_crc(self.vm_id, self.seq, self.file, self.size, self.sha256, self.entry)

    def as_row(self) -> tuple[str, int, str, int, str, str, int]:
        return (self.vm_id, self.seq, self.file, self.size, self.sha256, self.entry, self.crc())


def entry_meta(entry: VmEntry) -> str:
    return json.dumps(
        {"create_time_ns": entry.create_time_ns, "initial_generation": entry.initial_generation},
        sort_keys=True,
    )


def take(entry: VmEntry) -> tuple[bytes, str]:
    """The VM's snapshot bytes and server-side fields; call with entry.lock held."""
    return snapshot_vm(entry.vm), entry_meta(entry)


def file_name(vm_id: str, seq: int) -> str:
    return f"{vm_id}.{seq}{SUFFIX}"


def parse_file_name(name: str) -> tuple[str, int] | None:
    """The VM id and sequence of a snapshot file's name; None for any other name."""
    if not name.endswith(SUFFIX):
        return None
    vm_id, dot, seq = name[: -len(SUFFIX)].rpartition(".")
    if not dot or not vm_id or not seq.isdigit():
        return None
    return vm_id, int(seq)


def write(directory: Path, vm_id: str, seq: int, data: bytes, meta: str) -> SnapshotRow:
    """Write a snapshot file durably; returns its index row (not yet committed)."""
    name = file_name(vm_id, seq)
    write_durably(directory / name, data)
    return SnapshotRow(vm_id, seq, name, len(data), hashlib.sha256(data).hexdigest(), meta)


def read_index(
    db: sqlite3.Connection, db_path: Path
) -> tuple[list[SnapshotRow], list[CorruptState]]:
    """Every index row, and the rows whose checksum does not match (as damage)."""
    rows: list[SnapshotRow] = []
    damage: list[CorruptState] = []
    query = "SELECT vm_id, seq, file, size, sha256, entry, crc FROM snapshots ORDER BY vm_id"
    for vm_id, seq, file, size, sha256, entry, crc in db.execute(query):
        row = SnapshotRow(vm_id, seq, file, size, sha256, entry)
        if row.crc() != crc:
            damage.append(
                CorruptState(
                    db_path,
                    f"snapshot index row checksum mismatch (stored {crc:08x}, "
                    f"computed {row.crc():08x})",
                    vm_id=vm_id,
                )
            )
        else:
            rows.append(row)
    return rows, damage


def load(directory: Path, row: SnapshotRow, host: Host) -> VmEntry:
    """Read, verify and restore one snapshot; CorruptState says what is wrong with it."""
    path = directory / row.file
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptState(
            path, "missing: the snapshot index refers to it", vm_id=row.vm_id
        ) from None
    except OSError as exc:
        raise CorruptState(path, f"unreadable ({exc})", vm_id=row.vm_id) from exc
    if len(data) != row.size:
        raise CorruptState(
            path, f"torn: {len(data)} bytes, the index says {row.size}", vm_id=row.vm_id
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != row.sha256:
        raise CorruptState(
            path,
            f"SHA-256 mismatch (index {row.sha256[:16]}..., file {digest[:16]}...)",
            vm_id=row.vm_id,
        )
    try:
        meta: dict[str, Any] = json.loads(row.entry)
        vm = restore_vm(host, data)
        if vm.id != row.vm_id:
            raise ValueError(f"it holds vm {vm.id!r}")
        return VmEntry(vm, int(meta["create_time_ns"]), int(meta["initial_generation"]))
    except Exception as exc:  # anything a damaged or foreign snapshot raises
        raise CorruptState(path, f"does not restore: {exc}", vm_id=row.vm_id) from exc
