"""Errors of the durable store.

StateError            the state directory cannot be used; the server refuses to start
├── StateIncompatible a format version or host configuration this server cannot use
├── StateLocked       another kvmmu-server holds the directory
└── CorruptState      damage detected (checksum, torn or missing file, gap,
                      replay divergence); says which file or record and what
StoreFailed           a write failed while serving: the change is not durable,
                      and the server refuses further changes (UNAVAILABLE)
"""

from __future__ import annotations

from pathlib import Path

from server.errors import Unavailable


class StateError(Exception):
    """The state directory cannot be used as it is."""


class StateIncompatible(StateError):
    """Written by another format version or for another host configuration."""


class StateLocked(StateError):
    """Another process serves from this state directory."""


class CorruptState(StateError):
    """Damage in the state directory, located as precisely as possible.

    `path` is the damaged file, `seq` the first damaged journal record (None
    when the damage is not in the journal's records), `vm_id` the VM it touches.
    """

    def __init__(
        self, path: Path, what: str, *, seq: int | None = None, vm_id: str | None = None
    ) -> None:
        where = str(path)
        if seq is not None:
            where += f": journal record {seq}"
        if vm_id is not None:
            where += f" (vm {vm_id})"
        super().__init__(f"{where}: {what}")
        self.path = path
        self.what = what
        self.seq = seq
        self.vm_id = vm_id


class StoreFailed(Unavailable):
    """The journal could not be written; nothing more is acknowledged until a restart."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(
            f"the durable store failed ({cause}); the change was not acknowledged and the "
            "server accepts no more changes until it is restarted"
        )
        self.cause = cause
