"""kvmmu-server: serve the KVM x86 MMU model over gRPC.

Every flag has an environment variable KVMMU_<FLAG> (upper case, dashes as
underscores), except --discard-corrupt-tail; a flag given on the command line
wins. Prints what state it recovered, then "kvmmu-server: listening on
HOST:PORT" once serving (port 0 picks a free port). Exit status (EXIT_STATUS):
0 after a graceful stop on SIGTERM or SIGINT, also when the final snapshot
could not be written (one warning; the journal holds every acknowledged
change, so nothing is lost); 1 when the state directory or the address
cannot be used; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from mmu.errors import ModelError
from mmu.host import HostConfig
from mmu.profiles import DEFAULT_PROFILE, PROFILES
from server.app import create_server
from server.config import Limits, ServerConfig, split_assignment
from server.durability.cli import add_durability_arguments, durability_from_args
from server.durability.errors import StateError
from server.metrics import parse_metrics_address
from server.security import (
    add_security_arguments,
    listen_refusal,
    listen_warnings,
    security_from_args,
)
from server.security import describe as describe_security

LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
EXIT_STATUS = (
    "exit status: 0 after a graceful stop (SIGTERM/SIGINT), also when the final snapshot "
    "could not be written (a warning says why; the journal holds every acknowledged change, "
    "so nothing is lost); 1 when the state directory or the address cannot be used; "
    "2 for a usage error"
)
_LIMIT_HELP = {
    "max_vms": "VMs the server holds at once",
    "max_memslots_per_vm": "memslots per VM",
    "max_batch_size": "faults in one BatchFault call",
    "max_tables_per_vm": "page tables per VM (512 SPTEs each; the VM's SPTE limit)",
    "max_concurrent_streams": "StreamSptes and WatchEvents calls served at once",
    "default_page_size": "page size of List calls that give none",
    "max_page_size": "largest page of List calls",
    "default_chunk_size": "SPTEs per StreamSptes message when the call gives no hint",
    "max_chunk_size": "largest SPTEs per StreamSptes message",
    "max_message_bytes": "bytes of one request message",
    "max_dirty_log_pages": "pages a dirty-logging memslot may span",
    "max_inflight_rpcs": "calls running or waiting for a worker (streams included)",
}


def _env(name: str, default: str) -> str:
    return os.environ.get(f"KVMMU_{name.upper().replace('-', '_')}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvmmu-server",
        description="Serve the KVM x86 MMU model (kvmmu.v1.MmuService) over gRPC, with "
        "health checking and server reflection. Each flag can also be set with the "
        "environment variable shown.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        default=_env("listen", "127.0.0.1:50051"),
        help="address to serve on, HOST:PORT (port 0: any free port) [KVMMU_LISTEN]",
    )
    parser.add_argument(
        "--profile",
        default=_env("profile", DEFAULT_PROFILE),
        choices=sorted(PROFILES),
        help="host profile the kvm modules are set up from [KVMMU_PROFILE]",
    )
    env_sets = [s for s in _env("host-set", "").split(",") if s.strip()]
    parser.add_argument(
        "--host-set",
        action="append",
        default=env_sets,
        metavar="FIELD=VALUE",
        help="override one host field of the profile (repeatable; ints may be hex, bools "
        f"true/false); fields: {', '.join(HostConfig.field_names())} "
        "[KVMMU_HOST_SET, comma-separated]",
    )
    parser.add_argument(
        "--state-dir",
        default=_env("state-dir", "none"),
        help="directory of the durable state (created if missing; `make run` uses "
        ".kvmmu-state): every acknowledged change survives a restart, see --durability; "
        "'none' keeps all state in memory, for tests and experiments [KVMMU_STATE_DIR]",
    )
    limits = Limits()
    for name, text in _LIMIT_HELP.items():
        flag = name.replace("_", "-")
        parser.add_argument(
            f"--{flag}",
            type=int,
            default=_env(flag, str(getattr(limits, name))),
            help=f"limit: {text} [KVMMU_{name.upper()}]",
        )
    parser.add_argument(
        "--workers",
        type=int,
        default=_env("workers", "32"),
        help="RPC worker threads (streams hold one each) [KVMMU_WORKERS]",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=_env("grace", "10"),
        help="seconds in-flight calls get to finish on SIGTERM/SIGINT [KVMMU_GRACE]",
    )
    parser.add_argument(
        "--shutdown-drain",
        type=float,
        default=_env("shutdown-drain", "0.5"),
        help="seconds health reports NOT_SERVING before the server stops accepting "
        "[KVMMU_SHUTDOWN_DRAIN]",
    )
    parser.add_argument(
        "--log-level",
        default=_env("log-level", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log level; debug logs one line per request [KVMMU_LOG_LEVEL]",
    )
    parser.add_argument(
        "--metrics-listen",
        default=_env("metrics-listen", ""),
        help="HOST:PORT for a Prometheus /metrics endpoint; empty: none [KVMMU_METRICS_LISTEN]",
    )
    add_security_arguments(parser, _env)
    add_durability_arguments(parser, _env)
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    overrides = tuple(split_assignment(item) for item in args.host_set)
    limits = Limits(**{name: getattr(args, name) for name in _LIMIT_HELP})
    if not args.state_dir.strip():  # Path("") would be the working directory
        raise ValueError(
            "--state-dir is empty: give a directory, or 'none' to keep state in memory only"
        )
    state_dir = None if args.state_dir.lower() == "none" else Path(args.state_dir)
    config = ServerConfig(
        profile=args.profile,
        host_overrides=overrides,
        limits=limits,
        state_dir=state_dir,
        max_workers=args.workers,
        grace_seconds=args.grace,
        security=security_from_args(args),
        durability=durability_from_args(args),
    )
    config.host()  # validate the host now: a bad override is a usage error
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    try:
        config = config_from_args(args)
    except (ModelError, ValueError) as exc:
        parser.error(str(exc))
    for flag, seconds in (("--grace", args.grace), ("--shutdown-drain", args.shutdown_drain)):
        if not seconds >= 0:  # also refuses nan
            parser.error(f"{flag} must be a number of seconds, 0 or more (got {seconds})")
    # Streams can each hold a worker and an in-flight slot for as long as the client
    # likes; short calls must always find both.
    if args.workers <= args.max_concurrent_streams:
        parser.error("--workers must exceed --max-concurrent-streams")
    if args.max_inflight_rpcs <= args.max_concurrent_streams:
        parser.error("--max-inflight-rpcs must exceed --max-concurrent-streams")
    metrics_address = None
    if args.metrics_listen:
        try:
            metrics_address = parse_metrics_address(args.metrics_listen)
        except ValueError as exc:
            parser.error(f"--metrics-listen: {exc}")
    refusal = listen_refusal(args.listen, config.security)
    if refusal is not None:
        print(f"kvmmu-server: error: {refusal}", file=sys.stderr)
        return 2
    warnings = listen_warnings(
        args.listen, config.security, args.token_file, args.metrics_listen or None
    )
    for warning in warnings:
        logging.getLogger("kvmmu.server").warning("%s", warning)
    try:
        metrics = metrics_address is not None
        server, port = create_server(args.listen, config=config, metrics=metrics)
    except StateError as exc:
        print(f"kvmmu-server: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    except (OSError, RuntimeError) as exc:  # gRPC could not bind or load the credentials
        print(f"kvmmu-server: cannot listen on {args.listen}: {exc}", file=sys.stderr, flush=True)
        return 1
    host = args.listen.rpartition(":")[0]
    if server.store is None:
        print("kvmmu-server: state is kept in memory only (--state-dir none)", flush=True)
    else:
        for line in server.store.describe():
            print(f"kvmmu-server: {line}", flush=True)
    if metrics_address is not None:
        assert server.metrics is not None  # created because the address was given
        metrics_host, metrics_port = metrics_address
        try:
            metrics_port = server.metrics.serve(metrics_host, metrics_port)
        except OSError as exc:  # address in use, not local, ...
            print(
                f"kvmmu-server: cannot serve metrics on {args.metrics_listen}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            server.stop(grace=0)
            return 1
        shown = f"[{metrics_host}]" if ":" in metrics_host else metrics_host
        print(f"kvmmu-server: metrics on {shown}:{metrics_port}/metrics", flush=True)
    print(f"kvmmu-server: {describe_security(config.security)}", flush=True)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("kvmmu.server").info("signal %d: stopping gracefully", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Ready only now: a SIGTERM right after this line is a graceful stop, not a kill.
    print(f"kvmmu-server: listening on {host}:{port}", flush=True)
    stop.wait()
    server.stop(drain=args.shutdown_drain)
    try:
        print("kvmmu-server: stopped", flush=True)
    except BrokenPipeError:  # whoever read our stdout has gone; the stop itself is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
