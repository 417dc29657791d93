"""Transport security for the gRPC server: TLS credentials and bearer-token checks.

`TokenAuthInterceptor` runs before every other interceptor and before a
request is even deserialized: a call without `authorization: Bearer <token>`
naming one of the server's tokens ends with UNAUTHENTICATED and one fixed
message, whatever the method (an unknown method too), so a caller without
a token learns nothing else. Exempt: the health service, so load balancers
and `docker compose` health checks need no secret. Server reflection is NOT
exempt: with a token configured, grpcurl needs `-H 'authorization: Bearer ...'`.

Tokens are compared as SHA-256 digests with hmac.compare_digest, and are
never logged: the denial log line names the method and the peer only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, NoReturn

import grpc

from server.config import Limits
from server.interceptor import BaseInterceptor, Handler
from server.metrics import Metrics
from server.security import Security

log = logging.getLogger("kvmmu.server")

UNAUTHENTICATED_MESSAGE: Final = "a valid bearer token is required (authorization: Bearer <token>)"
# Methods of these services are served without a token.
EXEMPT_PREFIXES: Final = ("/grpc.health.v1.Health/",)
_SCHEME: Final = "bearer "


def auth_interceptors(security: Security, metrics: Metrics | None = None) -> list[BaseInterceptor]:
    """The interceptors that go before all others: the token check, if tokens are set."""
    return [TokenAuthInterceptor(security, metrics)] if security.requires_token else []


def grpc_options(limits: Limits) -> list[tuple[str, int]]:
    """Channel arguments of the server.

    gRPC's own receive cap is twice `max_message_bytes`: requests between the two
    reach the interceptor, which refuses them with a QuotaFailure naming the limit;
    larger ones gRPC drops itself (same code, its own message). No SO_REUSEPORT:
    another process must not be able to bind the server's port beside it.
    """
    return [
        ("grpc.max_receive_message_length", min(2 * limits.max_message_bytes, 2**31 - 1)),
        ("grpc.so_reuseport", 0),
    ]


def server_credentials(security: Security) -> grpc.ServerCredentials | None:
    """TLS credentials for `security.tls` (client certificates required with a client
    CA), or None for plaintext. Raises server.security.SecurityError for unreadable
    files."""
    if security.tls is None:
        return None
    key, chain, client_ca = security.tls.read()
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def bearer_token(metadata: Any) -> bytes | None:
    """The token of the one `authorization: Bearer <token>` entry, or None."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    value = values[0]
    if value[: len(_SCHEME)].lower() != _SCHEME:
        return None
    token = value[len(_SCHEME) :].strip()
    return token.encode() if token else None


class TokenAuthInterceptor(BaseInterceptor):
    """Requires a valid bearer token on every call except the exempt services."""

    def __init__(self, security: Security, metrics: Metrics | None = None) -> None:
        self.security = security
        self.metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = handler_call_details.method
        if method.startswith(EXEMPT_PREFIXES):
            return continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is not None and self.security.token_ok(token):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        # Label known methods by name; anything else is one label (bounded cardinality).
        label = method.rsplit("/", 1)[-1] if handler is not None else "unknown"
        return _deny(label, handler, self.metrics)


def _deny(label: str, handler: Handler | None, metrics: Metrics | None) -> Handler:
    """A handler of the method's kind that answers UNAUTHENTICATED without reading
    the request (no deserializer: its bytes are never parsed)."""

    def refuse(_request: Any, context: grpc.ServicerContext) -> NoReturn:
        if metrics is not None:  # counted, but kept out of the latency histogram
            metrics.requests.labels(label, "UNAUTHENTICATED").inc()
        log.warning("rpc method=%s code=UNAUTHENTICATED peer=%s", label, context.peer())
        context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

    if handler is not None and handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler is not None and handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler is not None and handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
