"""The kvmmu-server flags of durable state (added to its parser by server.main)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from server.durability.config import (
    LEVELS,
    MAX_INTERVAL,
    MIN_INTERVAL,
    DurabilityConfig,
    interval_problem,
)

Env = Callable[[str, str], str]
_DEFAULT = DurabilityConfig()


def add_durability_arguments(parser: argparse.ArgumentParser, env: Env) -> None:
    group = parser.add_argument_group(
        "durable state (with --state-dir DIR)",
        "Every acknowledged change is journaled (SQLite, WAL mode) before its reply; "
        "restart = load VM snapshots + replay the journal tail. A damaged state directory "
        "is reported, and the server refuses to start on it.",
    )
    group.add_argument(
        "--durability",
        choices=LEVELS,
        default=env("durability", _DEFAULT.level),
        help="process: a change is acknowledged once committed to the journal (not synced): "
        "it survives the server process being killed, not an OS crash or power loss. "
        "power: the journal is fsynced before acknowledging, with group commit (concurrent "
        "changes share one sync): it survives power loss [KVMMU_DURABILITY]",
    )
    group.add_argument(
        "--snapshot-every",
        type=int,
        metavar="RECORDS",
        default=env("snapshot-every", str(_DEFAULT.snapshot_records)),
        help="snapshot changed VMs and truncate the journal after this many journal records; "
        "0: never by count [KVMMU_SNAPSHOT_EVERY]",
    )
    group.add_argument(
        "--snapshot-every-mb",
        type=int,
        metavar="MB",
        default=env("snapshot-every-mb", str(_DEFAULT.snapshot_bytes >> 20)),
        help="... or after this many MiB of journal; 0: never by size [KVMMU_SNAPSHOT_EVERY_MB]",
    )
    group.add_argument(
        "--snapshot-interval",
        type=float,
        metavar="SECONDS",
        default=env("snapshot-interval", str(_DEFAULT.snapshot_seconds)),
        help=f"... or this often if anything changed: {MIN_INTERVAL:g} to {MAX_INTERVAL:g} "
        "(a week); 0: never by time (a snapshot is also taken at graceful shutdown) "
        "[KVMMU_SNAPSHOT_INTERVAL]",
    )
    group.add_argument(
        "--discard-corrupt-tail",
        action="store_true",
        help="start even on a damaged state directory: replay the journal up to its first "
        "damaged record and drop the rest, drop VMs whose snapshot is damaged, report all "
        "of it and move the damaged files aside. Command line only (no environment "
        "variable): dropping data is a one-off decision",
    )


def durability_from_args(args: argparse.Namespace) -> DurabilityConfig:
    """The config of the flags; ValueError (a usage error) names the flag that is wrong."""
    for flag, value in (("--snapshot-every", args.snapshot_every),
                        ("--snapshot-every-mb", args.snapshot_every_mb)):  # fmt: skip
        if value < 0:
            raise ValueError(f"{flag} must be 0 (off) or more (got {value})")
    problem = interval_problem(args.snapshot_interval)
    if problem is not None:
        raise ValueError(f"--snapshot-interval {problem}")
    return DurabilityConfig(
        level=args.durability,
        snapshot_records=args.snapshot_every,
        snapshot_bytes=args.snapshot_every_mb << 20,
        snapshot_seconds=args.snapshot_interval,
        discard_corrupt_tail=args.discard_corrupt_tail,
    )
