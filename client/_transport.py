"""The one seam to gRPC: channel, TLS, token, deadlines, retries and error mapping.

Every RPC goes through `Transport.unary` or `Transport.stream`, so each call
gets the default deadline (unless overridden), the bearer token, errors
translated by `client.errors.error_from_rpc`, and - for idempotent reads only -
retries on UNAVAILABLE with exponential backoff inside the same deadline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Final, Generic, TypeVar

import grpc

from client.errors import KvmmuError, Unavailable, error_from_rpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")
T = TypeVar("T")

DEFAULT_TARGET: Final = "127.0.0.1:50051"
DEFAULT_TIMEOUT: Final = 10.0
MAX_MESSAGE_BYTES: Final = 256 * 1024 * 1024


class Default(Enum):
    """Sentinel type: "use the client's default deadline"."""

    TIMEOUT = "default"


DEFAULT: Final = Default.TIMEOUT
Timeout = float | None | Default
"""A per-call deadline in seconds; None waits forever; DEFAULT uses the client's."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS settings: CA bundle (None: system roots), client certificate and key for mTLS.

    Each of `ca`, `cert`, `key` is a path to a PEM file or the PEM bytes.
    `server_name` overrides the name checked against the server certificate.
    """

    ca: Path | str | bytes | None = None
    cert: Path | str | bytes | None = None
    key: Path | str | bytes | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """The grpc channel credentials; ValueError if only one of cert and key is given,
        or if one of them is not PEM."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca, "CA"),
            private_key=_pem(self.key, "key"),
            certificate_chain=_pem(self.cert, "certificate"),
        )


def _pem(source: Path | str | bytes | None, what: str) -> bytes | None:
    if source is None:
        return None
    if not isinstance(source, bytes):
        return read_pem(Path(source))  # checks for the PEM block, naming the file
    if PEM_MARKER not in source:
        raise ValueError(f"the TLS {what} is not PEM: no '-----BEGIN' line")
    return source


PEM_MARKER: Final = b"-----BEGIN"


def read_pem(path: Path) -> bytes:
    """The bytes of the PEM file `path`; ValueError naming it unless it holds a PEM block.

    gRPC only finds out inside its C core, which logs its own lines and then
    fails the connection as if the server were unreachable.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if PEM_MARKER not in data:
        raise ValueError(f"{path} is not a PEM file: it has no '-----BEGIN' line")
    return data


# Targets in gRPC's own URI syntax; passed through as they are.
_SCHEMES: Final = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


def check_target(target: str) -> str:
    """`target` if it is a HOST:PORT (or a gRPC URI such as unix:PATH); else ValueError.

    gRPC does not refuse a bad HOST:PORT: it wraps a port beyond 65535 into
    another one, and an empty host only shows up in its C core's log. So the
    plain form is checked here, before any channel is made.
    """
    if target.startswith(_SCHEMES):
        return target
    host, colon, port = target.rpartition(":")
    if not colon:
        raise ValueError(f"expected HOST:PORT, got {target!r}")
    if not host:
        raise ValueError(f"{target!r} has no host (expected HOST:PORT)")
    if ":" in host and not (host.startswith("[") and host.endswith("]") and len(host) > 2):
        raise ValueError(f"{target!r}: an IPv6 address goes in brackets, as in [::1]:{port}")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{target!r}: the port must be a number in 1..65535")
    return target


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of idempotent reads on UNAVAILABLE: attempts in all, exponential backoff."""

    attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0-based), with +-20% jitter."""
        base = min(self.initial_backoff * self.multiplier**retry, self.max_backoff)
        return base * random.uniform(0.8, 1.2)


NO_RETRY: Final = RetryPolicy(attempts=1)


def make_channel(target: str, tls: TlsConfig | bool | None) -> grpc.Channel:
    """A channel to `target`; TLS when `tls` is a TlsConfig or True (system roots).

    ValueError if `target` is not HOST:PORT (see `check_target`) or a TLS file is not PEM.
    """
    check_target(target)
    options: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Reconnect quickly, so a retry can find a server that just came back.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if tls is None or tls is False:
        return grpc.insecure_channel(target, options=options)
    config = TlsConfig() if tls is True else tls
    if config.server_name:
        options.append(("grpc.ssl_target_name_override", config.server_name))
    return grpc.secure_channel(target, config.credentials(), options=options)


class Stream(Generic[T]):
    """An open server stream: iterate it for values; `cancel()` (or `with`) ends it early."""

    def __init__(self, call: grpc.CallIterator[Resp], convert: Callable[[Resp], T]) -> None:
        self._call = call
        self._iter: Iterator[Resp] = iter(call)
        self._convert = convert

    def __iter__(self) -> Stream[T]:
        return self

    def __next__(self) -> T:
        try:
            message = next(self._iter)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return self._convert(message)

    def cancel(self) -> None:
        """Cancel the call; iteration then stops with `client.errors.Cancelled`."""
        self._call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def check_token(token: str | None) -> str | None:
    """The token without surrounding whitespace; ValueError unless it is printable
    ASCII without spaces (what an HTTP/2 header and RFC 6750 allow)."""
    if token is None:
        return None
    token = token.strip()
    if any(not "!" <= c <= "~" for c in token):
        raise ValueError("the token must be printable ASCII without spaces (RFC 6750)")
    return token or None


class Transport:
    """A channel plus the call policy (deadline, token, retries) the client applies."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        token: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.channel = channel
        self.timeout = timeout
        self.retry = retry
        token = check_token(token)
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )

    def _seconds(self, timeout: Timeout) -> float | None:
        return self.timeout if isinstance(timeout, Default) else timeout

    def unary(
        self,
        rpc: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        idempotent: bool,
        timeout: Timeout = DEFAULT,
    ) -> Resp:
        """Call `rpc` once (or, if idempotent, until it stops being UNAVAILABLE)."""
        seconds = self._seconds(timeout)
        deadline = None if seconds is None else time.monotonic() + seconds
        attempts = self.retry.attempts if idempotent else 1
        for attempt in range(attempts):
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return rpc(request, timeout=left, metadata=self.metadata)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                if not self._retry(error, attempt, attempts, deadline):
                    raise error from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry(
        self, error: KvmmuError, attempt: int, attempts: int, deadline: float | None
    ) -> bool:
        if not isinstance(error, Unavailable) or attempt + 1 >= attempts:
            return False
        pause = self.retry.backoff(attempt)
        if deadline is not None and time.monotonic() + pause >= deadline:
            return False
        time.sleep(pause)
        return True

    def stream(
        self,
        rpc: grpc.UnaryStreamMultiCallable[Req, Resp],
        request: Req,
        convert: Callable[[Resp], T],
        *,
        timeout: Timeout = DEFAULT,
    ) -> Stream[T]:
        """Start a server stream (never retried: it may already have sent messages)."""
        call = rpc(request, timeout=self._seconds(timeout), metadata=self.metadata)
        return Stream(call, convert)

    def close(self) -> None:
        """Close the channel (cancels calls still running)."""
        self.channel.close()
