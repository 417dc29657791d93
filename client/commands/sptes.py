"""`kvmmu sptes`: dump a VM's SPTEs as a table or as the page-table tree."""

from __future__ import annotations

import click
from rich.text import Text
from rich.tree import Tree

from client.commands.app import App, pass_app
from client.commands.output import Col
from client.commands.params import ADDRESS, LEVEL, VM, gpa_to_gfn_range
from client.commands.spte_columns import columns, model_host, vm_view
from client.commands.views import hx, kind_text, level_name
from client.enums import TdpRoot
from client.results import SpteEntry
from mmu.vmtypes import VmView

TABLE = [
    Col("ROOT"),
    Col("GFN"),
    Col("LEVEL", "right"),
    Col("SPTE"),
    Col("KIND"),
    Col("PFN"),
    Col("ACCESS"),
    Col("A/D"),
    Col("MMIO GEN", "right"),
]


def _row(view: VmView, entry: SpteEntry) -> list[str | Text]:
    info = columns(view, entry.value, entry.level)
    return [
        entry.root.label,
        hx(entry.gfn),
        str(entry.level),
        f"{entry.value:#018x}",
        kind_text(info.kind),
        hx(info.pfn) if info.pfn is not None else "",
        info.access,
        info.ad,
        hx(info.mmio_gen) if info.mmio_gen is not None else "",
    ]


def _label(view: VmView, entry: SpteEntry) -> Text:
    info = columns(view, entry.value, entry.level)
    text = Text(f"L{entry.level} gfn {entry.gfn:#x} ")
    text.append(f"{entry.value:#018x} ", style="bold")
    text.append_text(kind_text(info.kind))
    if info.pfn is not None:
        text.append(f" pfn {info.pfn:#x}")
    if info.access:
        text.append(f" {info.access} {info.ad}")
    if info.mmio_gen is not None:
        text.append(f" gen {info.mmio_gen:#x}")
    return text


TREE_LEAVES_PER_TABLE = 8


def build_tree(
    view: VmView,
    entries: list[SpteEntry],
    root_level: int,
    leaves_per_table: int = TREE_LEAVES_PER_TABLE,
) -> Tree:
    """The tables as a tree: each entry under the non-leaf entry that points to its table.

    Every non-leaf entry is drawn; of the other entries only the first
    `leaves_per_table` of each table, then a count, so that a VM with millions
    of SPTEs still draws its structure in moments (the table view lists them all).
    """
    top = Tree(Text("page tables", style="bold"))
    roots: dict[TdpRoot, Tree] = {}
    parents: dict[tuple[TdpRoot, int, int], Tree] = {}
    shown: dict[int, int] = {}  # id(node) -> leaves drawn under it
    hidden: dict[int, tuple[Tree, int]] = {}

    def parent_key(entry: SpteEntry) -> tuple[TdpRoot, int, int]:
        span = 1 << (9 * entry.level)  # GFNs mapped by one entry one level up
        return entry.root, entry.level + 1, entry.gfn & ~(span - 1)

    tables = {parent_key(e) for e in entries}  # entries that point to a drawn table
    for entry in sorted(entries, key=lambda e: (e.root, e.gfn, -e.level)):
        if entry.root not in roots:
            roots[entry.root] = top.add(
                Text(f"{entry.root.label} root (level {root_level} table)", style="bold")
            )
        under = parents.get(parent_key(entry)) or roots[entry.root]
        if (entry.root, entry.level, entry.gfn) not in tables:
            drawn = shown.get(id(under), 0)
            if drawn >= leaves_per_table:
                hidden[id(under)] = (under, hidden.get(id(under), (under, 0))[1] + 1)
                continue
            shown[id(under)] = drawn + 1
        node = under.add(_label(view, entry))
        parents[(entry.root, entry.level, entry.gfn)] = node
    for under, count in hidden.values():
        under.add(Text(f"... {count} more entries in this table (see the table view)", "dim"))
    return top


@click.command(
    "sptes",
    epilog="\b\nExamples:\n  kvmmu sptes td1\n  kvmmu sptes td1 --start 0 --end 2M --all\n"
    "  kvmmu sptes vm1 --level 2 --present-only\n  kvmmu sptes td1 --tree\n"
    "  kvmmu --json sptes td1 | jq -c '.values'\n"
    "\b\n--start/--end are guest physical addresses without the TDX shared bit\n"
    "(start rounds down, end rounds up to a page).",
)
@click.argument("vm", type=VM)
@click.option("--start", type=ADDRESS, help="First GPA (default 0).")
@click.option("--end", type=ADDRESS, help="GPA after the range (default: no limit).")
@click.option("--level", type=LEVEL, help="Only entries at this level (1 4K, 2 2M, 3 1G).")
@click.option("--all", "include_non_leaf", is_flag=True, help="Also non-leaf entries.")
@click.option("--present-only", is_flag=True, help="Only shadow-present entries (no MMIO).")
@click.option("--root", type=click.Choice(TdpRoot.labels()), help="Only this root (TDX).")
@click.option("--tree", is_flag=True, help="Draw the page-table tree (implies --all).")
@pass_app
def sptes(
    app: App,
    vm: str,
    start: int | None,
    end: int | None,
    level: int | None,
    include_non_leaf: bool,
    present_only: bool,
    root: str | None,
    tree: bool,
) -> None:
    """Dump a VM's SPTEs: gfn, level, value, kind, pfn, access, A/D, MMIO generation."""
    if tree and level is not None:
        raise click.UsageError("--tree draws whole tables; --level filters entries: use one")
    start_gfn = end_gfn = None
    if start is not None or end is not None:
        start_gfn, end_gfn = gpa_to_gfn_range(start or 0, end if end is not None else 1 << 64)
    stream = app.client.stream_sptes(
        vm,
        start_gfn=start_gfn,
        end_gfn=end_gfn,
        level=level,
        only_present=present_only,
        include_non_leaf=include_non_leaf or tree,
        root=TdpRoot.from_label(root) if root else TdpRoot.UNSPECIFIED,
    )
    entries: list[SpteEntry] = []
    with stream, app.out.progress("SPTEs") as advance:
        for chunk in stream:
            if app.out.json_mode:
                app.out.json_line(chunk.proto)
            else:
                entries.extend(chunk.rows())
            advance(len(chunk))
    if app.out.json_mode:
        return
    info = app.client.get_vm(vm)
    host, differ = model_host(app.client.get_host())
    if differ:
        app.out.note(f"note: the local model's {', '.join(differ)} differ from the server's")
    view = vm_view(host, info)
    if tree:
        app.out.render(build_tree(view, entries, info.tdp_root_level))
        return
    app.out.table(TABLE, [_row(view, e) for e in entries])
    app.out.note(f"{len(entries)} SPTEs" + (f" at level {level_name(level)}" if level else ""))


COMMANDS = [sptes]
