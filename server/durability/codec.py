"""Journal records: one operation record (server.ops) as checksummed bytes, and back.

A record is a JSON header followed by the raw little-endian bytes of the
op's arrays (a BatchFault's GPAs and error codes: 8 bytes a fault, not a
JSON list). The header holds the op's scalar fields (as `op_to_dict` names
them), the arrays' names and lengths, and what the store adds beside the
op: `failed` (the op raised part-way, so replay must raise too) and, for a
CreateVm, the `max_tables` limit the VM was created with.

The CRC-32 of a row covers its sequence number, VM id, op name and record
bytes, so a damaged, moved or torn row is detected, not replayed.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

import numpy as np

from mmu.memslots import Memslot
from server import ops

RECORD_VERSION: Final = 1
_HEADER = struct.Struct("<BI")  # record version, JSON length
_U64: Final = np.dtype("<u8")


class RecordError(ValueError):
    """A record's bytes do not decode (only possible if its checksum was also defeated)."""


@dataclass(frozen=True, slots=True)
class Record:
    """A decoded journal record."""

    op: ops.Op[Any]
    failed: str | None = None  # the exception class the op raised when it was journaled
    max_tables: int | None = None  # CreateVm: the VM's page-table limit


def encode(record: Record) -> bytes:
    op = record.op
    header: dict[str, Any] = {"op": op.name}
    blobs: list[bytes] = []
    arrays: list[list[Any]] = []
    for f in fields(op):
        value = getattr(op, f.name)
        if isinstance(value, np.ndarray):
            raw = np.ascontiguousarray(value, dtype=_U64).tobytes()
            arrays.append([f.name, len(value)])
            blobs.append(raw)
        elif isinstance(value, Memslot):
            header[f.name] = asdict(value)
        else:
            header[f.name] = value
    meta: dict[str, Any] = {"fields": header}
    if arrays:
        meta["arrays"] = arrays
    if record.failed is not None:
        meta["failed"] = record.failed
    if record.max_tables is not None:
        meta["max_tables"] = record.max_tables
    text = json.dumps(meta, separators=(",", ":")).encode()
    return b"".join([_HEADER.pack(RECORD_VERSION, len(text)), text, *blobs])


def decode(data: bytes) -> Record:
    if len(data) < _HEADER.size:
        raise RecordError(f"{len(data)} bytes is shorter than a record header")
    version, length = _HEADER.unpack_from(data)
    if version != RECORD_VERSION:
        raise RecordError(f"record version {version}; this server reads {RECORD_VERSION}")
    end = _HEADER.size + length
    try:
        meta = json.loads(data[_HEADER.size : end])
        values: dict[str, Any] = dict(meta["fields"])
        offset = end
        for name, count in meta.get("arrays", []):
            size = int(count) * 8
            if offset + size > len(data):
                raise RecordError(f"array {name} runs past the end of the record")
            values[name] = np.frombuffer(data, dtype=_U64, count=count, offset=offset).astype(
                np.uint64
            )
            offset += size
        if offset != len(data):
            raise RecordError(f"{len(data) - offset} bytes after the last array")
        op = ops.op_from_dict(values)
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"undecodable record: {exc}") from exc
    return Record(op, meta.get("failed"), meta.get("max_tables"))


def row_crc(seq: int, vm_id: str, op_name: str, data: bytes) -> int:
    """CRC-32 of one journal row (every column but the CRC itself)."""
    crc = zlib.crc32(struct.pack("<q", seq))
    crc = zlib.crc32(f"{vm_id}\0{op_name}\0".encode(), crc)
    return zlib.crc32(data, crc)


def text_crc(*parts: object) -> int:
    """CRC-32 of a row of text and integers (the snapshot index, the meta table)."""
    return zlib.crc32("\0".join(str(p) for p in parts).encode())
