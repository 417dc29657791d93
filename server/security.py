"""Transport security settings: TLS files, bearer tokens, and the listen policy.

gRPC-free (server.auth builds the credentials and the interceptor from
these), so `ServerConfig` can hold them. Tokens are never kept as text: only
their SHA-256 digests are, compared in constant time, so a config that is
printed or logged reveals none.

The listen policy: plaintext without a token is fine on a loopback address
(127.0.0.0/8, ::1, localhost, a unix socket); anywhere else the server wants
TLS or a token, unless the operator says `--insecure`.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import os
import socket
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

MIN_TOKEN_CHARS: Final = 16
# RFC 6750 b64token characters: what may follow "Bearer " in the header.
TOKEN_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/="
)
LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class SecurityError(ValueError):
    """A TLS file or token file the server cannot use; the message says why."""


def token_digest(token: str | bytes) -> bytes:
    """SHA-256 of a token: what the server keeps and compares."""
    data = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(data).digest()


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key; a CA for client certificates."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def check(self) -> None:
        """Load the files as a TLS server would (the ssl module): SecurityError naming the
        flag for a key that does not match the certificate, an encrypted key, bad PEM."""
        self.read()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            raise SecurityError(
                f"--tls-cert {self.cert} / --tls-key {self.key}: not a usable pair "
                f"({getattr(exc, 'reason', None) or exc}); the key must match the "
                "certificate and not be encrypted"
            ) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except (ssl.SSLError, OSError) as exc:
                raise SecurityError(f"--tls-client-ca {self.client_ca}: {exc}") from None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(key, chain, client CA) bytes; SecurityError naming an unreadable file."""
        return (
            _read_pem(self.key, "--tls-key", "PRIVATE KEY"),
            _read_pem(self.cert, "--tls-cert", "CERTIFICATE"),
            None
            if self.client_ca is None
            else _read_pem(self.client_ca, "--tls-client-ca", "CERTIFICATE"),
        )


def _read_pem(path: Path, flag: str, marker: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"{flag} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data or marker.encode() not in data:
        raise SecurityError(f"{flag} {path}: not a PEM file with a {marker}")
    return data


@dataclass(frozen=True, slots=True)
class Security:
    """How the server authenticates clients; the default is plaintext, no token."""

    tls: TlsFiles | None = None
    # SHA-256 digests of the accepted bearer tokens; empty: no token needed.
    token_digests: frozenset[bytes] = field(default=frozenset(), repr=False)
    insecure: bool = False

    @property
    def requires_token(self) -> bool:
        return bool(self.token_digests)

    @property
    def mutual_tls(self) -> bool:
        return self.tls is not None and self.tls.client_ca is not None

    def token_ok(self, presented: bytes) -> bool:
        """Whether `presented` is one of the tokens, in time independent of its value.

        Digests have a fixed length, so not even the token's length leaks, and
        every configured token is compared (no early exit).
        """
        digest = hashlib.sha256(presented).digest()
        ok = False
        for expected in self.token_digests:
            ok |= hmac.compare_digest(digest, expected)
        return ok


def load_tokens(path: Path) -> frozenset[bytes]:
    """The digests of the tokens in a token file: one token a line; blank lines
    and lines starting with '#' are skipped (several tokens allow rotation)."""
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise SecurityError(f"--token-file {path}: tokens must be ASCII") from None
    except OSError as exc:
        raise SecurityError(f"--token-file {path}: {exc.strerror or exc}") from None
    digests = set()
    for number, raw in enumerate(text.splitlines(), 1):
        token = raw.strip()
        if not token or token.startswith("#"):
            continue
        if len(token) < MIN_TOKEN_CHARS:
            raise SecurityError(
                f"--token-file {path} line {number}: a token needs at least {MIN_TOKEN_CHARS} "
                "characters (make one with: python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        if not set(token) <= TOKEN_CHARS:
            raise SecurityError(
                f"--token-file {path} line {number}: a token may hold only letters, digits "
                "and -._~+/= (RFC 6750)"
            )
        digests.add(token_digest(token))
    if not digests:
        raise SecurityError(f"--token-file {path}: no token in the file")
    return frozenset(digests)


def token_file_warning(path: Path) -> str | None:
    """A warning when other users may read the token file, else None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH) and os.name == "posix":
        return f"--token-file {path} can be read by other users (chmod 600 it)"
    return None


def split_host(address: str) -> str:
    """The host part of HOST:PORT, [V6]:PORT or a unix: address (returned whole)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return address
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(address: str) -> bool:
    """Whether a listen address is only reachable from this machine.

    An empty host, 0.0.0.0 and [::] are every interface, so not loopback; a
    name counts only if every address it resolves to is loopback.
    """
    host = split_host(address)
    if host.startswith(("unix:", "unix-abstract:")):
        return True
    if host.lower() in LOOPBACK_NAMES:
        return True
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses
    )


def listen_refusal(address: str, security: Security) -> str | None:
    """Why the server must not listen on `address` with these settings, or None."""
    if security.insecure or is_loopback(address):
        return None
    if security.tls is not None or security.requires_token:
        return None
    return (
        f"refusing to listen on {address}: it is not a loopback address, and without TLS "
        "(--tls-cert/--tls-key) or a bearer token (--token-file) anyone who can reach it "
        "could create, change and delete VMs. Add TLS and/or a token, listen on "
        "127.0.0.1, or pass --insecure if the network is trusted."
    )


def listen_warnings(
    address: str,
    security: Security,
    token_file: str | None = None,
    metrics_address: str | None = None,
) -> list[str]:
    """What is weak about the settings: a token file others can read, a metrics
    endpoint off loopback, a non-loopback listener without TLS or client auth."""
    warnings = []
    if token_file is not None:
        warning = token_file_warning(Path(token_file))
        if warning is not None:
            warnings.append(warning)
    if metrics_address and not is_loopback(metrics_address):
        warnings.append(
            f"--metrics-listen {metrics_address} is plain HTTP without authentication and "
            "names every VM: keep it on a trusted network"
        )
    if is_loopback(address):
        return warnings
    if security.insecure and security.tls is None and not security.requires_token:
        warnings.append(f"--insecure: serving {address} in plaintext without authentication")
    elif security.tls is None and security.requires_token:
        warnings.append(
            f"serving {address} without TLS: bearer tokens travel in clear (add --tls-cert)"
        )
    elif security.tls is not None and not security.requires_token and not security.mutual_tls:
        warnings.append(
            f"serving {address} with TLS but no client authentication: any client that "
            "reaches it may use it (add --token-file or --tls-client-ca)"
        )
    return warnings


def add_security_arguments(parser: argparse.ArgumentParser, env: Callable[[str, str], str]) -> None:
    """kvmmu-server's TLS, token and --insecure flags (env: KVMMU_<FLAG>)."""
    group = parser.add_argument_group(
        "security",
        "TLS, mutual TLS and bearer tokens. Without TLS or a token the server listens "
        "only on loopback addresses unless --insecure is given.",
    )
    group.add_argument(
        "--tls-cert",
        default=env("tls-cert", "") or None,
        metavar="PEM",
        help="server certificate chain; with --tls-key, serve TLS only [KVMMU_TLS_CERT]",
    )
    group.add_argument(
        "--tls-key", default=env("tls-key", "") or None, metavar="PEM",
        help="private key of --tls-cert [KVMMU_TLS_KEY]",
    )  # fmt: skip
    group.add_argument(
        "--tls-client-ca",
        default=env("tls-client-ca", "") or None,
        metavar="PEM",
        help="CA bundle for client certificates: mutual TLS, every client must present a "
        "certificate it signed [KVMMU_TLS_CLIENT_CA]",
    )
    group.add_argument(
        "--token-file",
        default=env("token-file", "") or None,
        metavar="FILE",
        help="bearer tokens, one a line ('#' comments): every call except health checks "
        "needs 'authorization: Bearer <token>' [KVMMU_TOKEN_FILE]",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        default=env("insecure", "false").strip().lower() in {"1", "true", "yes", "on"},
        help="allow a non-loopback --listen without TLS or a token [KVMMU_INSECURE]",
    )


def security_from_args(args: argparse.Namespace) -> Security:
    """The Security of parsed flags; SecurityError for a bad combination or file."""
    cert, key, client_ca = args.tls_cert, args.tls_key, args.tls_client_ca
    if (cert is None) != (key is None):
        raise SecurityError("--tls-cert and --tls-key go together")
    if client_ca is not None and cert is None:
        raise SecurityError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
    tls = None
    if cert is not None:
        tls = TlsFiles(Path(cert), Path(key), None if client_ca is None else Path(client_ca))
        tls.check()  # fail now, with the flag named, rather than in gRPC
    digests = frozenset[bytes]()
    if args.token_file is not None:
        digests = load_tokens(Path(args.token_file))
    return Security(tls=tls, token_digests=digests, insecure=args.insecure)


def describe(security: Security) -> str:
    """One banner line: how clients connect and authenticate."""
    transport = "plaintext"
    if security.tls is not None:
        transport = "TLS with client certificates (mutual TLS)" if security.mutual_tls else "TLS"
    auth = "bearer token required" if security.requires_token else "no token"
    return f"{transport}, {auth}"
