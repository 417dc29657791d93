"""`connect()` and the `Client`: one method per kvmmu.v1.MmuService RPC."""

from __future__ import annotations

import grpc

from client._memory import MemoryMethods
from client._mmu import MmuMethods
from client._transport import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    RetryPolicy,
    TlsConfig,
    Transport,
    make_channel,
)
from client._vms import VmMethods


class Client(VmMethods, MemoryMethods, MmuMethods):
    """A connection to a kvmmu server; use `connect()` to make one, and `with` to close it.

    Every method takes a keyword `timeout` (seconds; None for no deadline)
    overriding the client's default, raises a `client.errors.KvmmuError`
    subclass when the RPC fails, and returns the `client.types` /
    `client.results` / `client.events` values. VMs are named by id ("td1")
    or resource name ("vms/td1"). List methods return lazy iterators that
    fetch further pages as you go; stream methods return a `Stream` you
    iterate and may `cancel()`.
    """

    def __init__(self, transport: Transport, target: str = DEFAULT_TARGET) -> None:
        super().__init__(transport)
        self.target = target

    @classmethod
    def for_channel(
        cls,
        channel: grpc.Channel,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        token: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Client:
        """A client over a channel you made (own options, interceptors); `close()` closes it."""
        transport = Transport(channel, timeout=timeout, token=token, retry=retry or RetryPolicy())
        return cls(transport, "<channel>")

    @property
    def timeout(self) -> float | None:
        """The default deadline of every call, in seconds (None: no deadline)."""
        return self._transport.timeout

    def close(self) -> None:
        """Close the channel."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(target={self.target!r})"


def connect(
    target: str = DEFAULT_TARGET,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    tls: TlsConfig | bool | None = None,
    token: str | None = None,
    retry: RetryPolicy | None = None,
) -> Client:
    """A client for the server at `target` ("host:port").

    `timeout` is the default deadline of each call in seconds (None: none).
    `tls` is None/False for plaintext, True for TLS with the system roots, or
    a `TlsConfig` (CA, client certificate and key). `token` is sent as
    `authorization: Bearer <token>` on every call. `retry` sets how
    idempotent reads are retried on UNAVAILABLE (default: 4 attempts with
    exponential backoff; `client.NO_RETRY` turns it off). The channel
    connects lazily: an unreachable server shows up on the first call as
    `client.errors.Unavailable`.
    """
    client = Client.for_channel(
        make_channel(target, tls), timeout=timeout, token=token, retry=retry
    )
    client.target = target
    return client
