"""The server interceptor: error translation (server.status, applied once to
every RPC), one structured log line per request, and the RPC metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message
from grpc_status import rpc_status

from mmu.errors import LimitExceeded
from server.errors import FieldError, Unavailable
from server.metrics import Metrics
from server.status import status_for

log = logging.getLogger("kvmmu.server")
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    BaseInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    BaseInterceptor = grpc.ServerInterceptor
Unary = Callable[[Any, grpc.ServicerContext], Any]
Streaming = Callable[[Any, grpc.ServicerContext], Iterator[Any]]
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _client_gone(error: Exception, context: grpc.ServicerContext) -> bool:
    """The call ended under us (cancelled, deadline): gRPC's own RpcError from the
    context, not a server bug to log as internal."""
    return isinstance(error, grpc.RpcError) and not context.is_active()


def _check_store(gate: StoreFailure | None) -> None:
    failure = gate() if gate is not None else None
    if failure is not None:
        raise Unavailable(
            f"the durable store failed ({failure}): the server answers nothing until it is "
            "restarted, and then serves exactly the acknowledged changes"
        )


class _Malformed:
    """Stands for a request whose bytes are not a valid message of the RPC's type."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(
    parse: Callable[[bytes], Any] | None, max_bytes: int | None = None
) -> Callable[[bytes], Any] | None:
    """A request deserializer that never raises (grpc would answer INTERNAL), and
    refuses requests over `max_bytes` unparsed (RESOURCE_EXHAUSTED naming the limit)."""
    if parse is None:
        return None

    def deserialize(data: bytes) -> Any:
        if max_bytes is not None and len(data) > max_bytes:
            return _Malformed(
                LimitExceeded(
                    f"the request has {len(data)} bytes; the server takes at most {max_bytes}",
                    limit="max_message_bytes",
                )
            )
        try:
            return parse(data)
        except Exception as exc:
            return _Malformed(exc)

    return deserialize


def _check(request: Any) -> None:
    if isinstance(request, _Malformed):
        if isinstance(request.error, LimitExceeded):
            raise request.error
        raise FieldError(f"the request bytes are not a valid message: {request.error}", field="")


# Methods answered only while the durable store works (health and reflection stay up).
GATED_PREFIX = "/kvmmu.v1.MmuService/"
StoreFailure = Callable[[], BaseException | None]


class ServingInterceptor(BaseInterceptor):
    """Wraps each method handler once (cached per method).

    `store_failure` reports a failed durable store: from then on every MmuService
    call, reads included, is UNAVAILABLE. The change whose record failed has
    taken effect in memory but is not durable, so after the failure nobody may
    see the in-memory state; a restart serves exactly what was acknowledged.
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        max_message_bytes: int | None = None,
        store_failure: StoreFailure | None = None,
    ) -> None:
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.store_failure = store_failure
        self._cache: dict[str, Handler] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        full = handler_call_details.method
        cached = self._cache.get(full)
        if cached is not None:
            return cached
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrap(full, handler)
        self._cache[full] = wrapped
        return wrapped

    def _wrap(self, full: str, handler: Handler) -> Handler:
        method = full.rsplit("/", 1)[-1]
        gate = self.store_failure if full.startswith(GATED_PREFIX) else None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary, gate),
                request_deserializer=_tolerant(
                    handler.request_deserializer, self.max_message_bytes
                ),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, handler.unary_stream, gate),
                request_deserializer=_tolerant(
                    handler.request_deserializer, self.max_message_bytes
                ),
                response_serializer=handler.response_serializer,
            )
        return handler  # the API has no client-streaming RPCs

    def _done(self, method: str, code: str, start: float, context: grpc.ServicerContext) -> None:
        seconds = time.perf_counter() - start
        if self.metrics is not None:
            self.metrics.observe(method, code, seconds)
        if code == "OK" and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "rpc method=%s code=OK ms=%.3f peer=%s", method, seconds * 1e3, context.peer()
            )

    def _failed(
        self,
        method: str,
        exc: Exception,
        request: Message | None,
        start: float,
        context: grpc.ServicerContext,
    ) -> Any:
        status = status_for(exc, method, request if isinstance(request, Message) else None)
        code = _CODE_NAMES.get(status.code, "UNKNOWN")
        self._done(method, code, start, context)
        log.warning(
            "rpc method=%s code=%s ms=%.3f peer=%s message=%r",
            method,
            code,
            (time.perf_counter() - start) * 1e3,
            context.peer(),
            status.message,
        )
        context.abort_with_status(rpc_status.to_status(status))

    def _unary(self, method: str, behavior: Unary, gate: StoreFailure | None) -> Unary:
        def serve(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                _check(request)
                _check_store(gate)
                response = behavior(request, context)
                _check_store(gate)  # failed while this call ran: its answer may not hold
            except Exception as exc:
                error = exc
            else:
                self._done(method, "OK", start, context)
                return response
            if _client_gone(error, context):
                self._done(method, "CANCELLED", start, context)
                return None
            return self._failed(method, error, request, start, context)

        return serve

    def _streaming(self, method: str, behavior: Streaming, gate: StoreFailure | None) -> Streaming:
        def serve(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            try:
                _check(request)
                _check_store(gate)
                for item in behavior(request, context):
                    _check_store(gate)
                    yield item
            except Exception as exc:
                error = exc
            else:
                code = "OK" if context.is_active() else "CANCELLED"
                self._done(method, code, start, context)
                return
            if _client_gone(error, context):
                self._done(method, "CANCELLED", start, context)
                return
            self._failed(method, error, request, start, context)

        return serve
