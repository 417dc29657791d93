"""Errors the model raises. Each says whose fault it was and which field.

    ModelError
    ├── InvalidInput       a value is malformed or out of range (caller's fault)
    │   └── HostRejected   well-formed, but this host's configuration rejects it
    ├── NotFound           a VM or memslot that does not exist
    ├── Conflict           the request collides with existing state (-EEXIST)
    ├── Refused            KVM would refuse it in the current state (-EINVAL,
    │                      unsupported VM type, SPTEs present, ...)
    └── LimitExceeded      a configured resource limit would be exceeded

A model operation validates before it changes anything, so an exception
always means nothing was applied.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class; `field` names the offending input when there is one."""

    def __init__(self, message: str, *, field: str | None = None, errno: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.errno = errno  # the kernel's answer, e.g. "EINVAL", when KVM has one

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidInput(ModelError):
    """A malformed or out-of-range value."""


class HostRejected(InvalidInput):
    """A well-formed value this host rejects (outside its MMIO mask, beyond its MAXPHYADDR)."""


class NotFound(ModelError):
    """A VM, memslot or other named object does not exist."""


class Conflict(ModelError):
    """The request collides with existing state (KVM's -EEXIST)."""


class Refused(ModelError):
    """KVM would refuse the request in the current state."""


class LimitExceeded(ModelError):
    """A configured limit would be exceeded; `limit` names it."""

    def __init__(self, message: str, *, limit: str, field: str | None = None) -> None:
        super().__init__(message, field=field, errno="ENOSPC")
        self.limit = limit
