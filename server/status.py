"""The one table from exceptions to gRPC status codes, with google.rpc details.

    exception (most specific first)   code                 details
    InvalidInput, FieldError          INVALID_ARGUMENT     BadRequest (proto field path)
      ... on a host-dependent value   FAILED_PRECONDITION  PreconditionFailure + BadRequest
    NotFound, ResourceNotFound        NOT_FOUND            ResourceInfo
    Conflict (-EEXIST), ResourceExists ALREADY_EXISTS      ResourceInfo or BadRequest
    Refused (-EINVAL, VM type, state) FAILED_PRECONDITION  PreconditionFailure
    LimitExceeded                     RESOURCE_EXHAUSTED   QuotaFailure naming the limit
    Unavailable (durable store failed) UNAVAILABLE         ErrorInfo only
    anything else (a bug)             INTERNAL             logged with its traceback

Every status also carries an ErrorInfo (domain "kvmmu.v1") whose metadata
holds the field, the kernel errno and the limit where there is one. Model
field names become proto field paths through FIELD_PATHS, per RPC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mmu.errors import (
    Conflict,
    HostRejected,
    InvalidInput,
    LimitExceeded,
    ModelError,
    NotFound,
    Refused,
)
from server.errors import ResourceExists, ResourceNotFound, Unavailable

DOMAIN: Final = "kvmmu.v1"
log = logging.getLogger("kvmmu.server")

_GFN_RANGE: Final = {"start_gfn": "gfn_range.start_gfn", "end_gfn": "gfn_range.end_gfn"}
# RPC name -> model field name -> proto field path.
FIELD_PATHS: Final[dict[str, dict[str, str]]] = {
    "CreateVm": {
        "vm_type": "vm.vm_type",
        "host.mmu": "vm.vm_type",
        "host.tdp_mmu": "vm.vm_type",
        "guest_maxphyaddr": "vm.guest_maxphyaddr",
        "mt_bits": "vm.mt_bits",
        "initial_generation": "vm.initial_generation",
    },
    "SetMemslot": {
        "slot": "memslot.slot",
        "base_gfn": "memslot.guest_phys_addr",
        "npages": "memslot.memory_size",
        "userspace_addr": "memslot.userspace_addr",
        "host_pfn_base": "memslot.host_pfn_base",
        "backing_level": "memslot.backing_page_size",
        "gmem_pfn_base": "memslot.gmem_pfn_base",
        "readonly": "memslot.readonly",
        "guest_memfd": "memslot.guest_memfd",
        "log_dirty_pages": "memslot.log_dirty_pages",
        "name": "parent",
    },
    "DeleteMemslot": {"slot": "name"},
    "GetDirtyLog": {"slot": "name"},
    "ZapSptes": dict(_GFN_RANGE),
    "AgeSptes": dict(_GFN_RANGE),
    "SetMemoryAttributes": dict(_GFN_RANGE),
    "ListMemslots": {"name": "parent"},
}


def _memslot_flag(request: Any) -> str:
    slot = request.memslot
    if slot.guest_memfd:
        return "memslot.guest_memfd"
    return "memslot.readonly" if slot.readonly else "memslot.log_dirty_pages"


def _attribute_range(request: Any, field: str) -> str:
    if request.WhichOneof("range") == "gpa_range":
        return "gpa_range.address" if field == "start_gfn" else "gpa_range.size"
    return _GFN_RANGE[field]


def field_path(method: str, request: Message | None, field: str | None) -> str:
    if field is None:
        return ""
    if method == "SetMemslot" and field == "flags" and request is not None:
        return _memslot_flag(request)
    if method == "SetMemoryAttributes" and field in _GFN_RANGE and request is not None:
        return _attribute_range(request, field)
    return FIELD_PATHS.get(method, {}).get(field, field)


def _error_info(reason: str, exc: ModelError | None, field: str) -> error_details_pb2.ErrorInfo:
    meta = {"field": field} if field else {}
    if exc is not None and exc.errno:
        meta["errno"] = exc.errno
    if isinstance(exc, LimitExceeded):
        meta["limit"] = exc.limit
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=meta)


def _bad_request(field: str, message: str) -> error_details_pb2.BadRequest:
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
    return error_details_pb2.BadRequest(field_violations=[violation])


def _resource_info(exc: ResourceNotFound | ResourceExists) -> error_details_pb2.ResourceInfo:
    return error_details_pb2.ResourceInfo(
        resource_type=exc.resource_type, resource_name=exc.resource_name, description=exc.message
    )


def _precondition(kind: str, field: str, message: str) -> error_details_pb2.PreconditionFailure:
    violation = error_details_pb2.PreconditionFailure.Violation(
        type=kind, subject=field, description=message
    )
    return error_details_pb2.PreconditionFailure(violations=[violation])


Details = tuple[int, str, list[Message]]


def _invalid(exc: ModelError, method: str, field: str) -> Details:
    if isinstance(exc, HostRejected):
        return (
            code_pb2.FAILED_PRECONDITION,
            "HOST_REJECTS_VALUE",
            [_precondition("HOST", field, exc.message), _bad_request(field, exc.message)],
        )
    return code_pb2.INVALID_ARGUMENT, "INVALID_FIELD", [_bad_request(field, exc.message)]


def _not_found(exc: ModelError, _method: str, field: str) -> Details:
    if isinstance(exc, ResourceNotFound):
        return code_pb2.NOT_FOUND, "RESOURCE_NOT_FOUND", [_resource_info(exc)]
    return code_pb2.NOT_FOUND, "RESOURCE_NOT_FOUND", [_bad_request(field, exc.message)]


def _conflict(exc: ModelError, _method: str, field: str) -> Details:
    if isinstance(exc, ResourceExists):
        return code_pb2.ALREADY_EXISTS, "RESOURCE_EXISTS", [_resource_info(exc)]
    return code_pb2.ALREADY_EXISTS, "KVM_EEXIST", [_precondition("KVM", field, exc.message)]


def _refused(exc: ModelError, _method: str, field: str) -> Details:
    kind = "KVM" if exc.errno else "STATE"
    return code_pb2.FAILED_PRECONDITION, "KVM_REFUSED", [_precondition(kind, field, exc.message)]


def _limit(exc: ModelError, _method: str, _field: str) -> Details:
    limit = exc.limit if isinstance(exc, LimitExceeded) else "limit"
    violation = error_details_pb2.QuotaFailure.Violation(subject=limit, description=exc.message)
    return (
        code_pb2.RESOURCE_EXHAUSTED,
        "LIMIT_EXCEEDED",
        [error_details_pb2.QuotaFailure(violations=[violation])],
    )


def _unavailable(_exc: ModelError, _method: str, _field: str) -> Details:
    return code_pb2.UNAVAILABLE, "STATE_STORE_FAILED", []


# Most specific first; the first isinstance match wins.
ERROR_TABLE: Final[
    tuple[tuple[type[ModelError], Callable[[ModelError, str, str], Details]], ...]
] = (
    (InvalidInput, _invalid),
    (NotFound, _not_found),
    (Conflict, _conflict),
    (Refused, _refused),
    (LimitExceeded, _limit),
    (Unavailable, _unavailable),
)


def _pack(code: int, message: str, details: list[Message]) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return status


def status_for(exc: BaseException, method: str, request: Message | None) -> status_pb2.Status:
    """The google.rpc.Status for an exception raised while serving `method`."""
    if isinstance(exc, ModelError):
        field = field_path(method, request, exc.field)
        for kind, build in ERROR_TABLE:
            if isinstance(exc, kind):
                code, reason, details = build(exc, method, field)
                message = f"{field}: {exc.message}" if field else exc.message
                return _pack(code, message, [*details, _error_info(reason, exc, field)])
    log.error("internal error in %s", method, exc_info=exc)
    return _pack(
        code_pb2.INTERNAL,
        "internal error (the server logged it)",
        [_error_info("INTERNAL", None, "")],
    )
