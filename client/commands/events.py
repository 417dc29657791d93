"""`kvmmu events`: a VM's kvmmmu tracepoint events, replayed or followed."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import click
from rich.text import Text

from client._transport import Stream
from client.commands.app import App, pass_app
from client.commands.output import message_dict
from client.commands.params import VM
from client.errors import Cancelled
from client.events import Event, EventBatch
from kvmmu.v1 import events_pb2

# Every event the server sends: the tracepoints, and "warning" for a reproduced WARN.
EVENT_NAMES = sorted(f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["fields"].fields)


def ftrace_line(event: Event) -> str:
    """The event as a line of /sys/kernel/tracing/trace (the model has no clock: the
    timestamp is the sequence number in microseconds)."""
    stamp = event.sequence / 1e6
    return f"{'kvmmu':>16}-0     [000] .....  {stamp:12.6f}: {event.name}: {event.text}"


@contextmanager
def cancelled_by_ctrl_c(stream: Stream[EventBatch]) -> Iterator[threading.Event]:
    """Ctrl-C cancels the stream instead of raising KeyboardInterrupt wherever the
    main thread is, which may be inside gRPC's own locking; a helper thread does the
    cancelling, so the handler never waits for a lock its own thread holds."""
    interrupted = threading.Event()

    def on_sigint(_signum: int, _frame: FrameType | None) -> None:
        interrupted.set()
        threading.Thread(target=stream.cancel, daemon=True).start()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_batch(app: App, batch: EventBatch, fmt: str) -> None:
    out = app.out
    if out.json_mode:
        out.json_line(batch.proto)
        return
    if batch.lost_events:
        out.styled(Text(f"... {batch.lost_events} events lost ...", style="red"))
    for event in batch.events:
        if fmt == "json":
            out.write(json.dumps(message_dict(event.proto), separators=(",", ":")))
        elif fmt == "ftrace":
            out.write(ftrace_line(event))
        else:
            line = Text(f"{event.sequence:>8} ", style="dim")
            line.append(event.name, style="bold")
            line.append(f": {event.text}")
            out.styled(line)


@click.command(
    "events",
    epilog="\b\nExamples:\n  kvmmu vm tracing td1 on\n  kvmmu events td1\n"
    "  kvmmu events td1 --follow --format ftrace\n"
    "  kvmmu events td1 --from 100 --name kvm_mmu_set_spte --name mark_mmio_spte\n"
    "\b\nEvents are recorded only while the VM's tracing is on (`kvmmu vm tracing`).\n"
    "Without --follow the retained log is printed from --from (default 1) and the\n"
    "command ends; --follow keeps printing new events until interrupted.\n"
    "--json prints each WatchEvents message; --format json one Event per line.\n\n"
    "Events (--name): " + ", ".join(EVENT_NAMES) + ".",
)
@click.argument("vm", type=VM)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option(
    "--from",
    "from_sequence",
    type=click.IntRange(1),
    help="First sequence number (default: 1, or only new events with --follow).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "ftrace", "json"]),
    default="text",
    show_default=True,
    help="Line format.",
)
@click.option(
    "--name",
    "names",
    multiple=True,
    type=click.Choice(EVENT_NAMES),
    metavar="EVENT",
    help="Only this tracepoint, or 'warning' (repeatable; see the list below).",
)
@pass_app
def events(
    app: App, vm: str, follow: bool, from_sequence: int | None, fmt: str, names: tuple[str, ...]
) -> None:
    """Print a VM's events (kvmmmu tracepoints and KVM WARNs)."""
    if from_sequence is None and not follow:
        from_sequence = 1
    stream = app.client.watch_events(vm, from_sequence=from_sequence, follow=follow, names=names)
    with stream, cancelled_by_ctrl_c(stream) as interrupted:
        try:
            for batch in stream:
                _print_batch(app, batch, fmt)
                app.out.flush()
        except Cancelled:
            if not interrupted.is_set():
                raise
            raise KeyboardInterrupt from None  # the CLI's exit status 130


COMMANDS = [events]
