"""Errors the server itself raises, as subclasses of the model's tree.

    mmu.errors.ModelError
    ├── InvalidInput ── FieldError        a request field is malformed; `field`
    │                                     is already the proto field path
    ├── NotFound ────── ResourceNotFound  a VM or memslot name that does not exist
    ├── Conflict ────── ResourceExists    a client-chosen id that is taken
    ├── Refused                           (model) KVM refuses in this state
    ├── LimitExceeded                     (model and server) a configured limit
    └── Unavailable                       the server cannot take changes now (its
                                          durable store failed; server.durability)

gRPC-free: `server.status` maps the whole tree to status codes in one table.
"""

from __future__ import annotations

from mmu.errors import Conflict, InvalidInput, ModelError, NotFound


class FieldError(InvalidInput):
    """A bad request field; `field` is its proto path (e.g. "memslot.memory_size")."""


class ResourceNotFound(NotFound):
    """A named resource does not exist (google.rpc.ResourceInfo)."""

    def __init__(self, resource_type: str, resource_name: str, *, field: str = "name") -> None:
        super().__init__(f"{resource_name} does not exist", field=field, errno="ENOENT")
        self.resource_type = resource_type
        self.resource_name = resource_name


class ResourceExists(Conflict):
    """A resource with this name already exists."""

    def __init__(self, resource_type: str, resource_name: str, *, field: str) -> None:
        super().__init__(f"{resource_name} already exists", field=field, errno="EEXIST")
        self.resource_type = resource_type
        self.resource_name = resource_name


class Unavailable(ModelError):
    """The server cannot accept the change now; the client may retry after a restart."""
