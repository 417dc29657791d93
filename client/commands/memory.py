"""`kvmmu memslot ...`, `kvmmu attributes` and `kvmmu dirty-log`."""

from __future__ import annotations

import click

from client.commands.app import App, pass_app
from client.commands.output import Col
from client.commands.params import ADDRESS, NUMBER, SIZE, SLOT, VM
from client.commands.views import hx, memslot_row, pairs
from client.enums import BackingPageSize
from client.types import MemslotChangeOutcome
from kvmmu.v1 import memslot_pb2

MEMSLOT_COLUMNS = [
    Col("SLOT", "right"),
    Col("GPA START"),
    Col("GPA END"),
    Col("SIZE", "right"),
    Col("BASE GFN"),
    Col("PAGES", "right"),
    Col("HOST PAGE"),
    Col("HOST PFN"),
    Col("FLAGS"),
]


def _show_outcome(app: App, outcome: MemslotChangeOutcome) -> None:
    app.out.fields(pairs(outcome), title="outcome")


@click.group(
    "memslot",
    epilog="\b\nExamples:\n  kvmmu memslot set td1 --slot 0 --gpa 0 --size 2G\n"
    "  kvmmu memslot list td1\n  kvmmu memslot delete td1 --slot 0",
)
def memslot_group() -> None:
    """Add, move, change, list and delete memslots."""


@memslot_group.command(
    "set",
    epilog="\b\nExamples:\n  kvmmu memslot set td1 --slot 0 --gpa 0 --size 2G\n"
    "  kvmmu memslot set vm1 --slot 1 --gpa 4G --size 1G --host-page-size 1G --dirty-log\n"
    "  kvmmu memslot set td1 --slot 2 --gpa 0 --size 1G --guest-memfd --gmem-pfn-base 0x100000",
)
@click.argument("vm", type=VM)
@click.option("--slot", type=SLOT, required=True, help="Slot id.")
@click.option("--gpa", type=ADDRESS, required=True, help="First guest physical address.")
@click.option("--size", type=SIZE, required=True, help="Size in bytes (e.g. 2G).")
@click.option("--readonly", is_flag=True, help="KVM_MEM_READONLY.")
@click.option("--dirty-log", is_flag=True, help="KVM_MEM_LOG_DIRTY_PAGES.")
@click.option("--guest-memfd", is_flag=True, help="KVM_MEM_GUEST_MEMFD (private memory).")
@click.option(
    "--host-page-size",
    type=click.Choice(BackingPageSize.labels(), case_sensitive=False),
    default="4K",
    show_default=True,
    help="Host pages backing the slot.",
)
@click.option("--host-pfn-base", type=NUMBER, default=0, help="Host PFN of the first page.")
@click.option("--userspace-addr", type=ADDRESS, default=0, help="Host virtual address.")
@click.option("--gmem-pfn-base", type=NUMBER, help="guest_memfd PFN of the first page.")
@pass_app
def set_memslot(
    app: App,
    vm: str,
    slot: int,
    gpa: int,
    size: int,
    readonly: bool,
    dirty_log: bool,
    guest_memfd: bool,
    host_page_size: str,
    host_pfn_base: int,
    userspace_addr: int,
    gmem_pfn_base: int | None,
) -> None:
    """Create a memslot, move it (new --gpa) or toggle dirty logging (KVM_SET_USER_MEMORY_REGION2).

    For an existing slot give the same --size and flags, changing only --gpa
    or --dirty-log, as KVM requires.
    """
    result = app.client.set_memslot(
        vm,
        slot,
        guest_phys_addr=gpa,
        memory_size=size,
        userspace_addr=userspace_addr,
        log_dirty_pages=dirty_log,
        readonly=readonly,
        guest_memfd=guest_memfd,
        host_pfn_base=host_pfn_base,
        backing_page_size=BackingPageSize.from_label(host_page_size),
        gmem_pfn_base=gmem_pfn_base,
    )
    if app.out.json_mode:
        app.out.json(result.proto)
        return
    app.out.table(MEMSLOT_COLUMNS, [memslot_row(result.memslot)])
    _show_outcome(app, result.outcome)


@memslot_group.command("get", epilog="\b\nExamples:\n  kvmmu memslot get td1 --slot 0")
@click.argument("vm", type=VM)
@click.option("--slot", type=SLOT, required=True, help="Slot id.")
@pass_app
def get_memslot(app: App, vm: str, slot: int) -> None:
    """Show one memslot."""
    found = app.client.get_memslot(vm, slot)
    if app.out.json_mode:
        app.out.json(found.proto)
        return
    app.out.fields(pairs(found))


@memslot_group.command("delete", epilog="\b\nExamples:\n  kvmmu memslot delete td1 --slot 0")
@click.argument("vm", type=VM)
@click.option("--slot", type=SLOT, required=True, help="Slot id.")
@pass_app
def delete_memslot(app: App, vm: str, slot: int) -> None:
    """Delete a memslot (KVM_MR_DELETE), zapping its SPTEs as KVM does."""
    result = app.client.delete_memslot(vm, slot)
    if app.out.json_mode:
        app.out.json(result.proto)
        return
    _show_outcome(app, result.outcome)


@memslot_group.command(
    "list", epilog="\b\nExamples:\n  kvmmu memslot list td1\n  kvmmu --json memslot list td1"
)
@click.argument("vm", type=VM)
@pass_app
def list_memslots(app: App, vm: str) -> None:
    """List a VM's memslots."""
    slots = list(app.client.list_memslots(vm))
    if app.out.json_mode:
        app.out.json(memslot_pb2.ListMemslotsResponse(memslots=[s.proto for s in slots]))
        return
    app.out.table(MEMSLOT_COLUMNS, [memslot_row(s) for s in slots])


@click.command(
    "attributes",
    epilog="\b\nExamples:\n  kvmmu attributes td1 --start 0 --end 2M --private\n"
    "  kvmmu attributes td1 --start 0x1000 --end 0x3000 --shared",
)
@click.argument("vm", type=VM)
@click.option("--start", type=ADDRESS, required=True, help="First GPA (4K aligned).")
@click.option("--end", type=ADDRESS, required=True, help="GPA after the range (4K aligned).")
@click.option("--private", is_flag=True, help="Set the PRIVATE attribute.")
@click.option("--shared", is_flag=True, help="Clear the PRIVATE attribute.")
@pass_app
def attributes(app: App, vm: str, start: int, end: int, private: bool, shared: bool) -> None:
    """Set or clear KVM_MEMORY_ATTRIBUTE_PRIVATE on [start, end) (KVM_SET_MEMORY_ATTRIBUTES)."""
    # Two flags, not a --private/--shared pair: click lets the last of a pair win,
    # and a command line asking for both is a mistake to point out.
    if private == shared:
        raise click.UsageError("give exactly one of --private and --shared")
    if end <= start:
        raise click.BadParameter(f"must be above --start {start:#x}", param_hint="--end")
    result = app.client.set_memory_attributes(vm, start, end - start, private=private)
    if app.out.json_mode:
        app.out.json(result.proto)
        return
    app.out.fields(pairs(result))


@click.command("dirty-log", epilog="\b\nExamples:\n  kvmmu dirty-log vm1 --slot 1")
@click.argument("vm", type=VM)
@click.option("--slot", type=SLOT, required=True, help="Slot id (it must log dirty pages).")
@pass_app
def dirty_log(app: App, vm: str, slot: int) -> None:
    """Harvest and clear a slot's dirty bitmap (KVM_GET_DIRTY_LOG)."""
    log = app.client.get_dirty_log(vm, slot)
    if app.out.json_mode:
        app.out.json(log.proto)
        return
    app.out.fields(
        [
            ("base_gfn", hx(log.base_gfn)),
            ("npages", str(log.npages)),
            ("dirty_count", str(log.dirty_count)),
            ("spte_changes", str(log.spte_changes)),
        ]
    )
    rows = [[hx(gfn), hx(gfn << 12)] for gfn in log.dirty_gfns]
    if rows:
        app.out.table([Col("DIRTY GFN"), Col("GPA")], rows)


COMMANDS = [memslot_group, attributes, dirty_log]
