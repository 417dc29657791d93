"""Typed Python client for the kvmmu gRPC API (`kvmmu.v1.MmuService`), and the `kvmmu` CLI.

    import client
    from client.enums import ErrorCode, VmType

    with client.connect("127.0.0.1:50051") as kvm:
        kvm.create_vm(VmType.TDX, vm_id="td1")
        result = kvm.fault("td1", 0x8000000FEB00000, ErrorCode.WRITE)
        print(result.outcome.name, hex(result.spte or 0))

Values: frozen dataclasses with the proto field names (`client.types`,
`client.results`, `client.events`), ints for 64-bit values, enums from
`client.enums`; each keeps its message as `.proto`. Errors: the
`client.errors` hierarchy (`InvalidArgument.field_violations`, ...).

Names load on first use (PEP 562): `import client.cli` must be able to set
gRPC's environment before grpc itself is imported, since its C core reads
the environment once, at import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client._transport import (
        DEFAULT_TARGET,
        DEFAULT_TIMEOUT,
        NO_RETRY,
        RetryPolicy,
        Stream,
        TlsConfig,
    )
    from client.client import Client, connect
    from client.errors import (
        AlreadyExists,
        Cancelled,
        DeadlineExceeded,
        FailedPrecondition,
        FieldViolation,
        InvalidArgument,
        KvmmuError,
        NotFound,
        PermissionDenied,
        ResourceExhausted,
        ServerError,
        ServerUnreachable,
        StoreFailed,
        Unauthenticated,
        Unavailable,
        Unimplemented,
        Violation,
    )

_HOMES: dict[str, str] = {
    "AlreadyExists": "client.errors",
    "Cancelled": "client.errors",
    "Client": "client.client",
    "DEFAULT_TARGET": "client._transport",
    "DEFAULT_TIMEOUT": "client._transport",
    "DeadlineExceeded": "client.errors",
    "FailedPrecondition": "client.errors",
    "FieldViolation": "client.errors",
    "InvalidArgument": "client.errors",
    "KvmmuError": "client.errors",
    "NO_RETRY": "client._transport",
    "NotFound": "client.errors",
    "PermissionDenied": "client.errors",
    "ResourceExhausted": "client.errors",
    "RetryPolicy": "client._transport",
    "ServerError": "client.errors",
    "ServerUnreachable": "client.errors",
    "StoreFailed": "client.errors",
    "Stream": "client._transport",
    "TlsConfig": "client._transport",
    "Unauthenticated": "client.errors",
    "Unavailable": "client.errors",
    "Unimplemented": "client.errors",
    "Violation": "client.errors",
    "connect": "client.client",
}

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "NO_RETRY",
    "AlreadyExists",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "KvmmuError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "ServerError",
    "ServerUnreachable",
    "StoreFailed",
    "Stream",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Violation",
    "connect",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
