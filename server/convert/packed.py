"""Fast filling of packed repeated fields from numpy arrays.

`extend(arr.tolist())` costs a Python int per element. Instead the packed
field is encoded here from the array's bytes and merged into the message in
C (MergeFromString appends to repeated fields): fixed64 fields (SPTEs,
GFNs) are the little-endian array itself; varint fields whose values are
all below 128 (levels, roots, fault outcome codes) are one byte each.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message

WIRE_LEN = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def small_packed(field_number: int, values: npt.NDArray[Any]) -> bytes:
    """Encoded packed field of non-negative values < 128 (one byte each)."""
    if len(values) == 0:
        return b""
    data = np.ascontiguousarray(values, dtype=np.uint8).tobytes()
    return _varint(field_number << 3 | WIRE_LEN) + _varint(len(data)) + data


def fixed64_packed(field_number: int, values: npt.NDArray[Any]) -> bytes:
    """Encoded packed fixed64 field: the array's little-endian bytes."""
    if len(values) == 0:
        return b""
    data = np.ascontiguousarray(values, dtype="<u8").tobytes()
    return _varint(field_number << 3 | WIRE_LEN) + _varint(len(data)) + data


def fill(
    message: Message, small: dict[str, npt.NDArray[Any]], wide: dict[str, npt.NDArray[Any]]
) -> None:
    """Append `small` (varint, values < 128) and `wide` (fixed64) arrays to repeated fields."""
    fields = message.DESCRIPTOR.fields_by_name
    slow: dict[str, npt.NDArray[Any]] = {}
    for name, values in list(small.items()):
        if len(values) and (int(values.min()) < 0 or int(values.max()) >= 0x80):
            slow[name] = small.pop(name)  # not one byte each: the slow path
    for name, values in slow.items():
        getattr(message, name).extend(values.tolist())
    encoded = b"".join(small_packed(fields[name].number, v) for name, v in small.items())
    encoded += b"".join(fixed64_packed(fields[name].number, v) for name, v in wide.items())
    if encoded:
        message.MergeFromString(encoded)
