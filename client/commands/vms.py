"""`kvmmu vm ...`: create, list, get, update, tracing, delete, set-mmio-value."""

from __future__ import annotations

import click

from client.commands.app import App, pass_app
from client.commands.output import Col
from client.commands.params import NUMBER, VM
from client.commands.views import hx, pairs, vm_pairs, vm_row
from client.enums import VmType
from client.types import Vm
from kvmmu.v1 import vm_pb2

VM_COLUMNS = [
    Col("VM"),
    Col("TYPE"),
    Col("MMIO VALUE"),
    Col("ROOT LEVEL", "right"),
    Col("GENERATION", "right"),
    Col("TRACING"),
    Col("NAME"),
]


def _show_vm(app: App, vm: Vm) -> None:
    if app.out.json_mode:
        app.out.json(vm.proto)
        return
    app.out.fields(vm_pairs(vm))
    if vm.stats is not None:
        app.out.fields(pairs(vm.stats, frozenset({"name"})), title="stats")


@click.group(
    "vm",
    epilog="\b\nExamples:\n  kvmmu vm create --type tdx --id td1\n  kvmmu vm list\n"
    "  kvmmu vm get td1 --stats\n  kvmmu vm delete td1",
)
def vm_group() -> None:
    """Create, list, inspect, change and delete VMs."""


def _non_empty_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--id ""` is refused: the API reads an empty id as "pick one", which would
    silently create a VM under a random id the user did not ask for."""
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty (leave --id out to let the server pick)")
    return value


@vm_group.command(
    "create",
    epilog="\b\nExamples:\n  kvmmu vm create --type tdx --id td1\n"
    "  kvmmu vm create --type sev-es --name 'my guest' --tracing",
)
@click.option(
    "--type",
    "vm_type",
    type=click.Choice(VmType.labels(), case_sensitive=False),
    default="default",
    show_default=True,
    help="KVM VM type.",
)
@click.option(
    "--id",
    "vm_id",
    callback=_non_empty_id,
    help="VM id ([a-z][a-z0-9-]*); default: the server picks one.",
)
@click.option("--name", "display_name", default="", help="Free-form display name.")
@click.option(
    "--guest-maxphyaddr", type=click.IntRange(0, 52), default=0, help="Guest MAXPHYADDR (0: host)."
)
@click.option("--tracing", is_flag=True, help="Record events from the start.")
@pass_app
def create(
    app: App,
    vm_type: str,
    vm_id: str | None,
    display_name: str,
    guest_maxphyaddr: int,
    tracing: bool,
) -> None:
    """Create a VM (KVM_CREATE_VM) with the MMIO value its type gets."""
    vm = app.client.create_vm(
        VmType.from_label(vm_type),
        vm_id=vm_id or "",
        display_name=display_name,
        guest_maxphyaddr=guest_maxphyaddr,
        tracing_enabled=tracing,
    )
    _show_vm(app, vm)


@vm_group.command("list", epilog="\b\nExamples:\n  kvmmu vm list\n  kvmmu --json vm list")
@click.option("--stats", is_flag=True, help="Include each VM's statistics (JSON only).")
@pass_app
def list_vms(app: App, stats: bool) -> None:
    """List every VM."""
    vms = list(app.client.list_vms(stats=stats))
    if app.out.json_mode:
        app.out.json(vm_pb2.ListVmsResponse(vms=[v.proto for v in vms]))
        return
    app.out.table(VM_COLUMNS, [vm_row(v) for v in vms])


@vm_group.command("get", epilog="\b\nExamples:\n  kvmmu vm get td1\n  kvmmu vm get td1 --stats")
@click.argument("vm", type=VM)
@click.option("--stats", is_flag=True, help="Include the VM's statistics.")
@pass_app
def get(app: App, vm: str, stats: bool) -> None:
    """Show one VM."""
    _show_vm(app, app.client.get_vm(vm, stats=stats))


@vm_group.command(
    "update",
    epilog="\b\nExamples:\n  kvmmu vm update td1 --name 'TD one'\n"
    "  kvmmu vm update td1 --tracing on",
)
@click.argument("vm", type=VM)
@click.option("--name", "display_name", help="New display name.")
@click.option("--tracing", type=click.Choice(["on", "off"]), help="Record events or not.")
@pass_app
def update(app: App, vm: str, display_name: str | None, tracing: str | None) -> None:
    """Change a VM's display name or tracing flag (UpdateVm)."""
    if display_name is None and tracing is None:
        raise click.UsageError("give --name and/or --tracing")
    result = app.client.update_vm(
        vm,
        display_name=display_name,
        tracing_enabled=None if tracing is None else tracing == "on",
    )
    _show_vm(app, result)


@vm_group.command(
    "tracing", epilog="\b\nExamples:\n  kvmmu vm tracing td1 on\n  kvmmu vm tracing td1 off"
)
@click.argument("vm", type=VM)
@click.argument("state", type=click.Choice(["on", "off"]))
@pass_app
def tracing(app: App, vm: str, state: str) -> None:
    """Turn event recording for `kvmmu events` on or off."""
    result = app.client.update_vm(vm, tracing_enabled=state == "on")
    if app.out.json_mode:
        app.out.json(result.proto)
        return
    app.out.write(f"{result.name}: tracing {'on' if result.tracing_enabled else 'off'}")


@vm_group.command("delete", epilog="\b\nExamples:\n  kvmmu vm delete td1")
@click.argument("vm", type=VM)
@pass_app
def delete(app: App, vm: str) -> None:
    """Delete a VM and all its state."""
    app.client.delete_vm(vm)
    if app.out.json_mode:
        app.out.write("{}")
        return
    app.out.write(f"deleted {vm if vm.startswith('vms/') else 'vms/' + vm}")


@vm_group.command(
    "set-mmio-value",
    epilog="\b\nExamples:\n  kvmmu vm set-mmio-value vm1 0x6\n"
    "  kvmmu vm set-mmio-value td1 0 --zap",
)
@click.argument("vm", type=VM)
@click.argument("value", type=NUMBER)
@click.option("--zap", is_flag=True, help="Zap every SPTE of the VM first (needed if it has any).")
@pass_app
def set_mmio_value(app: App, vm: str, value: int, zap: bool) -> None:
    """Set the VM's MMIO value (kvm_mmu_set_mmio_spte_value)."""
    result = app.client.set_mmio_value(vm, value, zap_existing=zap)
    if app.out.json_mode:
        app.out.json(result.proto)
        return
    app.out.fields(
        [
            ("vm", result.vm.name),
            ("mmio_value", hx(result.vm.mmio_value)),
            ("spte_changes", str(result.spte_changes)),
        ]
    )


COMMANDS = [vm_group]
