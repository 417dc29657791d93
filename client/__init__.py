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
"""

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
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Violation,
)

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
    "Stream",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Violation",
    "connect",
]
