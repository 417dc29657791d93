"""`kvmmu zap`, `age`, `stats`, `health` and `completion`."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class
from grpc_health.v1 import health_pb2

from client.commands.app import EXIT_REFUSED, App, pass_app
from client.commands.params import ADDRESS, SLOT, VM, gpa_to_gfn_range
from client.commands.views import pairs
from client.enums import HealthStatus


@click.command(
    "zap",
    epilog="\b\nExamples:\n  kvmmu zap td1 --range 0 2M\n  kvmmu zap vm1 --all\n"
    "  kvmmu zap vm1 --slot 1\n"
    "\b\n--range takes guest physical addresses (start rounds down, end rounds up).",
)
@click.argument("vm", type=VM)
@click.option(
    "--range", "gpa_range", type=(ADDRESS, ADDRESS), metavar="START END", help="kvm_zap_gfn_range."
)
@click.option("--all", "zap_all", is_flag=True, help="kvm_mmu_zap_all_fast: every direct root.")
@click.option("--slot", type=SLOT, help="The GFNs of this memslot.")
@pass_app
def zap(
    app: App, vm: str, gpa_range: tuple[int, int] | None, zap_all: bool, slot: int | None
) -> None:
    """Zap SPTEs: a GPA range, every direct root, or a memslot's range."""
    if (gpa_range is not None) + zap_all + (slot is not None) != 1:
        raise click.UsageError("give exactly one of --range START END, --all or --slot N")
    if gpa_range is not None:
        start, end = gpa_to_gfn_range(*gpa_range, hint="--range")
        result = app.client.zap_sptes(vm, start_gfn=start, end_gfn=end)
    else:
        result = app.client.zap_sptes(vm, zap_all=zap_all, slot=slot)
    if app.out.json_mode:
        app.out.json(result.proto)
        return
    app.out.fields(pairs(result))


@click.command(
    "age",
    epilog="\b\nExamples:\n  kvmmu age vm1 --start 0 --end 1G\n"
    "  kvmmu age vm1 --start 0 --end 2M --test",
)
@click.argument("vm", type=VM)
@click.option("--start", type=ADDRESS, required=True, help="First GPA.")
@click.option("--end", type=ADDRESS, required=True, help="GPA after the range.")
@click.option("--test", is_flag=True, help="Only test_young: change nothing.")
@pass_app
def age(app: App, vm: str, start: int, end: int, test: bool) -> None:
    """Age a GPA range (MMU notifier clear_young), or only test it (test_young)."""
    start_gfn, end_gfn = gpa_to_gfn_range(start, end)
    result = app.client.age_sptes(vm, start_gfn, end_gfn, test_only=test)
    if app.out.json_mode:
        app.out.json(result.proto)
        return
    app.out.fields(pairs(result))


@click.command("stats", epilog="\b\nExamples:\n  kvmmu stats td1\n  kvmmu --json stats td1")
@click.argument("vm", type=VM)
@pass_app
def stats(app: App, vm: str) -> None:
    """Show a VM's statistics under KVM's debugfs names."""
    result = app.client.get_vm_stats(vm)
    if app.out.json_mode:
        app.out.json(result.proto)
        return
    app.out.fields(pairs(result, frozenset({"name"})))


@click.command(
    "health",
    epilog="\b\nExamples:\n  kvmmu health\n  kvmmu --server kvmmu:50051 health --timeout 2\n"
    "\b\nExit status 0 only when the server answers SERVING (1 otherwise, 3 when it\n"
    "cannot be reached): usable as a container health check.",
)
@click.option("--timeout", "seconds", type=click.FloatRange(min=0, min_open=True), help="Deadline.")
@click.option("--service", default="", help="Service name to check (default: the whole server).")
@pass_app
@click.pass_context
def health(ctx: click.Context, app: App, seconds: float | None, service: str) -> None:
    """Query the standard gRPC health service."""
    kwargs = {} if seconds is None else {"timeout": seconds}
    status = app.client.health(service, **kwargs)
    if app.out.json_mode:
        app.out.json(health_pb2.HealthCheckResponse(status=int(status)))
    else:
        app.out.write(status.name)
    if status != HealthStatus.SERVING:
        ctx.exit(EXIT_REFUSED)


@click.command(
    "completion",
    epilog='\b\nExamples:\n  eval "$(kvmmu completion bash)"     # in ~/.bashrc\n'
    "  kvmmu completion zsh > ~/.zfunc/_kvmmu\n  kvmmu completion fish | source",
)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script (click's; VM ids complete from the server)."""
    cls = get_completion_class(shell)
    assert cls is not None
    root = ctx.find_root().command
    click.echo(cls(root, {}, "kvmmu", "_KVMMU_COMPLETE").source())


COMMANDS = [zap, age, stats, health, completion]
