"""How durable state is kept: the durability level and when snapshots are taken.

gRPC-free and import-light, so `server.config.ServerConfig` can carry it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Level = Literal["process", "power"]
LEVELS: Final[tuple[Level, ...]] = ("process", "power")


@dataclass(frozen=True, slots=True)
class DurabilityConfig:
    """Options of the durable store (used only when the server has a state directory).

    level "process": a change is acknowledged once committed to SQLite's WAL
    file (in the OS page cache): it survives the server process being killed.
    level "power": the WAL is fsynced before acknowledging (group commit: one
    sync for every change pending at that moment): it survives power loss.

    A snapshot of every changed VM is taken, and the journal truncated behind
    it, once `snapshot_records` records or `snapshot_bytes` bytes were
    journaled since the last one, every `snapshot_seconds` if anything
    changed, and at graceful shutdown; 0 disables a trigger.
    """

    level: Level = "process"
    snapshot_records: int = 20_000
    snapshot_bytes: int = 64 << 20
    snapshot_seconds: float = 300.0
    discard_corrupt_tail: bool = False

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"durability level must be one of {', '.join(LEVELS)}")
        if self.snapshot_records < 0 or self.snapshot_bytes < 0 or self.snapshot_seconds < 0:
            raise ValueError("snapshot triggers must not be negative (0 disables one)")
