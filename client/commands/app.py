"""The CLI's per-invocation state (settings, the lazily connected client, output)
and the one place where client errors become a message and an exit status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import click

from client._transport import TlsConfig
from client.client import Client, connect
from client.commands.output import Output
from client.errors import (
    DeadlineExceeded,
    KvmmuError,
    ServerUnreachable,
    StoreFailed,
    Unauthenticated,
)

EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3

# Proto field paths the server names in errors -> the CLI option that sets them.
FIELD_OPTIONS: Final = {
    "vm_id": "--id",
    "vm.vm_type": "--type",
    "vm.guest_maxphyaddr": "--guest-maxphyaddr",
    "vm.display_name": "--name",
    "memslot.slot": "--slot",
    "memslot.guest_phys_addr": "--gpa",
    "memslot.memory_size": "--size",
    "memslot.readonly": "--readonly",
    "memslot.log_dirty_pages": "--dirty-log",
    "memslot.guest_memfd": "--guest-memfd",
    "memslot.gmem_pfn_base": "--gmem-pfn-base",
    "memslot.host_pfn_base": "--host-pfn-base",
    "memslot.userspace_addr": "--userspace-addr",
    "memslot.backing_page_size": "--host-page-size",
    "gfn_range.start_gfn": "--start",
    "gfn_range.end_gfn": "--end",
    "gpa_range.address": "--start",
    "gpa_range.size": "--end",
    "gpas": "--from-file",
    "error_codes": "--from-file",
    "level": "--level",
    "slot": "--slot",
    "host.host_profile": "--profile",
    "host.mmio_value": "--mmio-value",
}

# Proto field names the server's messages mention -> what a CLI user does instead.
MESSAGE_OPTIONS: Final = {"(zap_existing)": "(pass --zap)"}


@dataclass(frozen=True, slots=True)
class Settings:
    """The global options."""

    server: str
    timeout: float | None
    tls: TlsConfig | None
    token: str | None


class App:
    """Passed to every command: settings, output, and the client (connected on first use)."""

    def __init__(self, settings: Settings, out: Output) -> None:
        self.settings = settings
        self.out = out
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        """The client for --server, created on first use."""
        if self._client is None:
            s = self.settings
            try:
                self._client = connect(s.server, timeout=s.timeout, tls=s.tls, token=s.token)
            except ValueError as exc:  # a token or TLS setting that cannot be used
                raise click.UsageError(str(exc)) from None
        return self._client

    def close(self) -> None:
        """Close the client if one was made."""
        if self._client is not None:
            self._client.close()
            self._client = None


pass_app = click.make_pass_decorator(App)


def describe(exc: KvmmuError, server: str, timeout: float | None, *, tls: bool = False) -> str:
    """One line saying what went wrong, naming the field (and its CLI option) if any."""
    if isinstance(exc, DeadlineExceeded):
        return f"no answer from the server at {server} within {timeout}s (--timeout)"
    if isinstance(exc, ServerUnreachable):
        return (
            f"cannot reach the kvmmu server at {server} ({exc.message}); "
            f"{_unreachable_hint(exc, tls)}"
        )
    if isinstance(exc, StoreFailed):
        return (
            f"the server at {server} cannot store changes: {exc.message} "
            "(fix its state directory's disk, then restart it)"
        )
    if isinstance(exc, Unauthenticated):
        return f"unauthenticated: {exc.message} (set --token or KVMMU_TOKEN)"
    text = f"{exc.code.name.lower().replace('_', ' ')}: {exc.message}"
    extra = [
        f"{v.field}: {v.description}"
        for v in exc.field_violations
        if v.description not in exc.message
    ]
    if extra:
        text += "; " + "; ".join(extra)
    option = FIELD_OPTIONS.get(exc.field or "")
    if option:
        text += f" ({option})"
    for proto_words, cli_words in MESSAGE_OPTIONS.items():
        text = text.replace(proto_words, cli_words)
    return text


def _unreachable_hint(exc: ServerUnreachable, tls: bool) -> str:
    """What to try: TLS settings when the connection got as far as TLS, else the address.

    gRPC reports one address's failure (often ::1's refusal for "localhost"), so
    with TLS in use a refused connection may still be a rejected certificate.
    """
    message = exc.message.lower()
    if "handshake" in message or "ssl" in message:
        return "the TLS handshake failed: check --tls-ca, --tls-cert and --tls-key"
    if "socket closed" in message:
        return (
            "the server closed the connection: if it serves TLS, pass --tls-ca "
            "(and --tls-cert/--tls-key for mutual TLS)"
        )
    if tls:
        return (
            "is it running at that address? If so, check --tls-ca, and --tls-cert/--tls-key "
            "if it requires a client certificate"
        )
    return "start it with `make run` or set --server / KVMMU_SERVER"


def exit_status(exc: KvmmuError) -> int:
    """3 when the server could not be reached, 1 when it refused the request."""
    return EXIT_UNREACHABLE if isinstance(exc, ServerUnreachable) else EXIT_REFUSED
