"""Server configuration: the host the server models, its limits, where state lives.

gRPC-free, so the apply layer and a future journal replay can use it alone.
Host overrides (`--host-set field=value`) are typed and validated against
`mmu.host.HostConfig`, the same way the kvm modules take their parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final

from mmu.errors import InvalidInput
from mmu.host import Host, HostConfig
from mmu.pool import DEFAULT_MAX_TABLES
from mmu.profiles import DEFAULT_PROFILE, PROFILES, host_config, host_from_profile
from server.durability.config import DurabilityConfig
from server.security import Security

TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on", "y"})
FALSE_WORDS: Final = frozenset({"0", "false", "no", "off", "n"})


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits; exceeding one is RESOURCE_EXHAUSTED naming it."""

    max_vms: int = 64
    max_memslots_per_vm: int = 512
    max_batch_size: int = 1 << 16
    max_tables_per_vm: int = DEFAULT_MAX_TABLES
    max_concurrent_streams: int = 16
    default_page_size: int = 50
    max_page_size: int = 1000
    default_chunk_size: int = 1 << 16
    max_chunk_size: int = 1 << 17  # ~22 bytes per entry at worst: under 4 MiB a message
    # A request message larger than this is refused before it is parsed.
    max_message_bytes: int = 4 << 20
    # Pages a dirty-logging memslot may span: its bitmap is built on every GetDirtyLog
    # (1 bit a page; the default 2^25 pages = 128 GiB of guest memory, a 4 MiB bitmap).
    max_dirty_log_pages: int = 1 << 25
    # Calls running or queued for a worker; gRPC refuses more before reading them, so
    # a flood of requests cannot queue without bound in memory.
    max_inflight_rpcs: int = 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"limit {f.name} must be at least 1")
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size exceeds max_page_size")
        if self.default_chunk_size > self.max_chunk_size:
            raise ValueError("default_chunk_size exceeds max_chunk_size")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `create_server` needs besides the address."""

    profile: str = DEFAULT_PROFILE
    host_overrides: tuple[tuple[str, str], ...] = ()
    limits: Limits = Limits()
    state_dir: Path | None = None
    max_workers: int = 32
    grace_seconds: float = 10.0
    security: Security = field(default_factory=Security)
    durability: DurabilityConfig = field(default_factory=DurabilityConfig)  # with state_dir

    def host(self) -> Host:
        return host_from_profile(self.profile, **self.parsed_overrides())

    def parsed_overrides(self) -> dict[str, bool | int | str]:
        return dict(parse_host_override(name, text) for name, text in self.host_overrides)

    def overridden_fields(self) -> list[str]:
        """HostConfig fields whose value differs from the profile's."""
        base = PROFILES[self.profile].config
        cfg = host_config(self.profile, **self.parsed_overrides())
        return [f.name for f in fields(HostConfig) if getattr(cfg, f.name) != getattr(base, f.name)]


def parse_host_override(name: str, text: str) -> tuple[str, bool | int | str]:
    """One `field=value` for HostConfig, converted to the field's type."""
    types = {f.name: str(f.type) for f in fields(HostConfig)}
    if name not in types:
        raise InvalidInput(f"unknown host field; choose one of {sorted(types)}", field=name)
    kind = types[name]
    word = text.strip()
    if kind == "bool":
        if word.lower() in TRUE_WORDS:
            return name, True
        if word.lower() in FALSE_WORDS:
            return name, False
        raise InvalidInput(f"{text!r} is not a boolean (true/false)", field=name)
    if kind == "int":
        try:
            return name, int(word, 0)
        except ValueError:
            raise InvalidInput(f"{text!r} is not an integer", field=name) from None
    return name, word


def split_assignment(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip():
        raise InvalidInput(f"{item!r} is not field=value", field="host-set")
    return name.strip(), value
