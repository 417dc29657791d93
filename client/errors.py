"""The client's exceptions, and the one table that maps gRPC status codes onto them.

    KvmmuError                   every error the client raises for a failed RPC
    ├── InvalidArgument          INVALID_ARGUMENT: a request field is malformed
    ├── NotFound                 NOT_FOUND: the VM, memslot or profile does not exist
    ├── AlreadyExists            ALREADY_EXISTS: id taken, or memslots overlap (-EEXIST)
    ├── FailedPrecondition       FAILED_PRECONDITION: KVM refuses in this state / on this host
    ├── ResourceExhausted        RESOURCE_EXHAUSTED: a server limit (quota_violations)
    ├── Unauthenticated          UNAUTHENTICATED: missing or bad token
    ├── PermissionDenied         PERMISSION_DENIED
    ├── Unimplemented            UNIMPLEMENTED: the server does not offer this RPC
    ├── Cancelled                CANCELLED
    ├── ServerError              INTERNAL, UNKNOWN, DATA_LOSS, ...: a server bug
    ├── StoreFailed              UNAVAILABLE from a server whose durable store failed
    └── ServerUnreachable        the server did not answer
        ├── Unavailable          UNAVAILABLE: cannot connect (reads are retried first)
        └── DeadlineExceeded     DEADLINE_EXCEEDED: no answer within the deadline

Each keeps the status `code`, the server's `message` and the unpacked
google.rpc `details` (BadRequest, PreconditionFailure, QuotaFailure,
ResourceInfo, ErrorInfo), with typed views of the common ones. The
original grpc.RpcError is chained as `__cause__`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

M = TypeVar("M", bound=Message)

_DETAIL_TYPES: Final[tuple[type[Message], ...]] = (
    error_details_pb2.BadRequest,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.QuotaFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One google.rpc.BadRequest field violation: the proto field path and what is wrong."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class Violation:
    """A PreconditionFailure or QuotaFailure violation (type is "" for quota)."""

    type: str
    subject: str
    description: str


class KvmmuError(Exception):
    """An RPC failed: status code, the server's message, and the google.rpc details."""

    def __init__(
        self, code: grpc.StatusCode, message: str, details: tuple[Message, ...] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def _all(self, kind: type[M]) -> list[M]:
        return [d for d in self.details if isinstance(d, kind)]

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        """The google.rpc.BadRequest field violations (proto field paths)."""
        return tuple(
            FieldViolation(v.field, v.description)
            for d in self._all(error_details_pb2.BadRequest)
            for v in d.field_violations
        )

    @property
    def violations(self) -> tuple[Violation, ...]:
        """PreconditionFailure and QuotaFailure violations."""
        out = [
            Violation(v.type, v.subject, v.description)
            for d in self._all(error_details_pb2.PreconditionFailure)
            for v in d.violations
        ]
        out += [
            Violation("", v.subject, v.description)
            for d in self._all(error_details_pb2.QuotaFailure)
            for v in d.violations
        ]
        return tuple(out)

    @property
    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        """The google.rpc.ErrorInfo (reason, domain "kvmmu.v1", metadata), if sent."""
        found = self._all(error_details_pb2.ErrorInfo)
        return found[0] if found else None

    @property
    def resource_info(self) -> error_details_pb2.ResourceInfo | None:
        """The google.rpc.ResourceInfo naming the missing or existing resource, if sent."""
        found = self._all(error_details_pb2.ResourceInfo)
        return found[0] if found else None

    @property
    def field(self) -> str | None:
        """The request field the error is about, if the server named one."""
        if self.field_violations:
            return self.field_violations[0].field
        info = self.error_info
        if info is not None and info.metadata.get("field"):
            return str(info.metadata["field"])
        return None


class InvalidArgument(KvmmuError):
    """INVALID_ARGUMENT: a malformed request field (see `field_violations`)."""


class NotFound(KvmmuError):
    """NOT_FOUND: the named resource does not exist (see `resource_info`)."""


class AlreadyExists(KvmmuError):
    """ALREADY_EXISTS: the id is taken, or KVM's -EEXIST (overlapping memslots)."""


class FailedPrecondition(KvmmuError):
    """FAILED_PRECONDITION: KVM refuses in this state or on this host (see `violations`)."""


class ResourceExhausted(KvmmuError):
    """RESOURCE_EXHAUSTED: a server limit was reached (see `violations`)."""


class Unauthenticated(KvmmuError):
    """UNAUTHENTICATED: the server wants a (different) bearer token."""


class PermissionDenied(KvmmuError):
    """PERMISSION_DENIED: the caller may not do this."""


class Unimplemented(KvmmuError):
    """UNIMPLEMENTED: the server does not offer this RPC."""


class Cancelled(KvmmuError):
    """CANCELLED: the call was cancelled."""


class ServerError(KvmmuError):
    """INTERNAL, UNKNOWN, DATA_LOSS and other codes: the server failed (a bug)."""


class StoreFailed(KvmmuError):
    """UNAVAILABLE with reason STATE_STORE_FAILED: the server answered, but its durable
    store failed; it serves nothing until restarted (retrying does not help)."""


STORE_FAILED_REASON: Final = "STATE_STORE_FAILED"


class ServerUnreachable(KvmmuError):
    """The server did not answer (UNAVAILABLE or DEADLINE_EXCEEDED)."""


class Unavailable(ServerUnreachable):
    """UNAVAILABLE: no connection to the server (idempotent reads were retried first)."""


class DeadlineExceeded(ServerUnreachable):
    """DEADLINE_EXCEEDED: no answer within the call's deadline."""


# The one mapping from status codes to exceptions; codes not listed are ServerError.
STATUS_ERRORS: Final[dict[grpc.StatusCode, type[KvmmuError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def _unpack(status_details: object) -> tuple[Message, ...]:
    out: list[Message] = []
    for any_msg in status_details:  # type: ignore[attr-defined]
        for kind in _DETAIL_TYPES:
            if any_msg.Is(kind.DESCRIPTOR):
                detail = kind()
                any_msg.Unpack(detail)
                out.append(detail)
                break
    return tuple(out)


def error_from_rpc(exc: grpc.RpcError) -> KvmmuError:
    """The KvmmuError for a failed call (`exc` is the grpc.Call that raised)."""
    call = exc if isinstance(exc, grpc.Call) else None
    code = call.code() if call is not None else grpc.StatusCode.UNKNOWN
    message = (call.details() if call is not None else None) or "(the server sent no message)"
    details: tuple[Message, ...] = ()
    if call is not None:
        try:
            status = rpc_status.from_call(call)
        except ValueError:  # details that do not match the code/message: keep the message
            status = None
        if status is not None:
            message = status.message or message
            details = _unpack(status.details)
    kind = STATUS_ERRORS.get(code, ServerError)
    if code == grpc.StatusCode.UNAVAILABLE and any(
        isinstance(d, error_details_pb2.ErrorInfo) and d.reason == STORE_FAILED_REASON
        for d in details
    ):
        kind = StoreFailed
    return kind(code, message, details)
