"""How durable state is kept: the durability level and when snapshots are taken.

gRPC-free and import-light, so `server.config.ServerConfig` can carry it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

Level = Literal["process", "power"]
LEVELS: Final[tuple[Level, ...]] = ("process", "power")
# The snapshot interval, when not 0 (off): shorter only burns CPU waking up, longer
# than a week is a mistake (and beyond what a thread can wait for).
MIN_INTERVAL: Final = 0.1
MAX_INTERVAL: Final = 7 * 24 * 3600.0


def interval_problem(seconds: float) -> str | None:
    """Why `seconds` is no snapshot interval (None if it is one)."""
    if seconds == 0 or (math.isfinite(seconds) and MIN_INTERVAL <= seconds <= MAX_INTERVAL):
        return None
    return (
        f"must be 0 (no snapshots by time) or {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds "
        f"(one week); got {seconds:g}"
    )


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
        if self.snapshot_records < 0 or self.snapshot_bytes < 0:
            raise ValueError("snapshot triggers must not be negative (0 disables one)")
        problem = interval_problem(self.snapshot_seconds)
        if problem is not None:
            raise ValueError(f"the snapshot interval {problem}")
