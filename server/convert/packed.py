"""Fast filling of packed repeated fields from numpy arrays.

`extend(arr.tolist())` costs a Python int per element. Arrays whose values
are all below 128 (levels, roots, fault outcome codes) encode as one varint
byte each, so their packed field is just the array's bytes: built here and
merged into the message in C (MergeFromString appends to repeated fields).
Wider values (SPTEs, GFNs) still go through tolist.
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


def fill(
    message: Message, small: dict[str, npt.NDArray[Any]], wide: dict[str, npt.NDArray[Any]]
) -> None:
    """Append `small` (values < 128) and `wide` arrays to the named repeated fields."""
    fields = message.DESCRIPTOR.fields_by_name
    for name, values in list(small.items()):
        if len(values) and (int(values.min()) < 0 or int(values.max()) >= 0x80):
            wide = {**wide, name: small.pop(name)}  # not one byte each: the slow path
    for name, values in wide.items():
        getattr(message, name).extend(values.tolist())
    encoded = b"".join(small_packed(fields[name].number, values) for name, values in small.items())
    if encoded:
        message.MergeFromString(encoded)
