"""AIP-158 pagination: page sizes and opaque, checked page tokens.

A token names the collection it belongs to and the key of the last item
served; the next page starts after that key, so pages stay consistent while
items are added or removed. A token from another collection, or one that was
altered, is INVALID_ARGUMENT on page_token.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json

from server.config import Limits
from server.errors import FieldError

_DOMAIN = b"kvmmu.v1 page token\0"


def _digest(payload: bytes) -> str:
    return hashlib.sha256(_DOMAIN + payload).hexdigest()[:16]


def page_size(requested: int, limits: Limits) -> int:
    if requested < 0:
        raise FieldError("must not be negative", field="page_size")
    if requested == 0:
        return limits.default_page_size
    return min(requested, limits.max_page_size)


def encode_token(collection: str, last_key: str) -> str:
    payload = json.dumps({"c": collection, "k": last_key}, separators=(",", ":")).encode()
    body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    return f"{body}.{_digest(payload)}"


def decode_token(token: str, collection: str) -> str | None:
    """The last key served, or None for the first page."""
    if not token:
        return None
    body, _, digest = token.partition(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = json.loads(payload)
    except (binascii.Error, ValueError):
        raise FieldError("not a page token of this server", field="page_token") from None
    if (
        digest != _digest(payload)
        or not isinstance(data, dict)
        or data.get("c") != collection
        or not isinstance(data.get("k"), str)
    ):
        raise FieldError("not a page token of this list", field="page_token")
    key: str = data["k"]
    return key


def paginate(
    keys: list[str], after: str | None, size: int, collection: str
) -> tuple[list[str], str]:
    """The keys of one page (keys sorted) and the next page token ('' on the last page)."""
    start = 0
    if after is not None:
        start = bisect.bisect_right(keys, after)
    page = keys[start : start + size]
    more = start + size < len(keys)
    return page, encode_token(collection, page[-1]) if more and page else ""
