"""`kvmmu decode`: every bit field of a 64-bit value read as an SPTE."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click
from rich.text import Text

from client.commands.app import App, pass_app
from client.commands.offline_decode import decode_offline
from client.commands.output import Col
from client.commands.params import LEVEL, NUMBER, OUTPUT_FILE, VM, write_output
from client.commands.views import hx, kind_text, level_name
from client.enums import VmType
from client.pictures.bitfield import bitfield_svg
from client.results import SpteDecoding
from mmu.profiles import PROFILES


def show_decoding(app: App, d: SpteDecoding) -> None:
    """The decoding for people (or as DecodeSpteResponse JSON)."""
    out = app.out
    if out.json_mode:
        out.json(d.proto)
        return
    out.styled(Text(d.summary, style="bold"))
    head: list[tuple[str, str | Text]] = [
        ("kind", kind_text(d.kind)),
        ("verdict", d.verdict),
        ("level", level_name(d.level)),
    ]
    head += [("pfn", hx(d.pfn)), ("access", d.access or "-")]
    if d.mmio is not None:
        valid = "-" if d.mmio.generation_valid is None else str(d.mmio.generation_valid).lower()
        head.append(
            (
                "mmio",
                f"gfn {d.mmio.gfn:#x} access {d.mmio.access:#x} "
                f"generation {d.mmio.generation:#x} (valid: {valid})",
            )
        )
    head += [
        ("is_mmio_for_vm", "yes" if d.is_mmio_for_vm else "no"),
        ("is_mmio_for_host_value", "yes" if d.is_mmio_for_host_value else "no"),
        ("reserved_bits", hx(d.reserved_bits)),
    ]
    out.fields(head)
    rows = [[f.bits, f.name, hx(f.value), f.kind.label, f.meaning] for f in reversed(d.fields)]
    cols = [Col("BITS", "right"), Col("FIELD"), Col("VALUE"), Col("KIND"), Col("MEANING")]
    out.table(cols, rows)
    for reason in d.reasons:
        out.write(f"- {reason}")
    for problem in d.misconfig:
        out.styled(Text(f"! {problem}", style="red"))
    true = [f.name for f in fields(d.predicates) if getattr(d.predicates, f.name) is True]
    out.write("predicates: " + (", ".join(true) or "none true"))


@click.command(
    "decode",
    epilog="\b\nExamples:\n"
    "  kvmmu decode 0x8000000000000006 --profile intel-ept           # offline\n"
    "  kvmmu decode 0x0 --profile intel-tdx --vm-type tdx            # TDX MMIO SPTE\n"
    "  kvmmu decode 0x860000000a3bb77 --profile intel-ept --level 1\n"
    "  kvmmu decode 0x600000001000b77 --vm td1                       # the VM's masks\n"
    "  kvmmu decode 0xfeb00008 --profile intel-tdx --vm-type tdx --svg spte.svg\n"
    "\b\nWith --profile the value is decoded locally (no server). With --vm the\n"
    "server decodes it for that VM; with neither, for the server's own host.",
)
@click.argument("value", type=NUMBER)
@click.option("--vm", type=VM, help="Decode for this VM (its MMIO value and generation).")
@click.option(
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    help="Decode offline for this host profile.",
)
@click.option("--mmio-value", type=NUMBER, help="The VM MMIO value to test (default: the type's).")
@click.option(
    "--vm-type",
    type=click.Choice(VmType.labels(), case_sensitive=False),
    help="The VM type whose MMIO value applies (default: default; tdx: 0).",
)
@click.option("--generation", type=NUMBER, help="Memslot generation to check an MMIO SPTE against.")
@click.option("--level", type=LEVEL, help="Level of the entry (1..5); default: read as a leaf.")
@click.option(
    "--svg",
    "svg_file",
    type=OUTPUT_FILE,
    help="Also draw the bit fields as an SVG diagram into this file.",
)
@pass_app
def decode(
    app: App,
    value: int,
    vm: str | None,
    profile: str | None,
    mmio_value: int | None,
    vm_type: str | None,
    generation: int | None,
    level: int | None,
    svg_file: Path | None,
) -> None:
    """Decode VALUE as an SPTE: every bit field, its kind and why."""
    if vm is not None and (profile or mmio_value is not None or generation is not None or vm_type):
        raise click.UsageError(
            "--vm uses the VM's own masks; drop --profile/--mmio-value/--generation/--vm-type"
        )
    kind = VmType.from_label(vm_type) if vm_type else VmType.DEFAULT
    if profile is not None:
        decoded = decode_offline(
            value,
            profile,
            mmio_value=mmio_value,
            vm_type=kind.kvm_type,
            generation=generation,
            level=level,
        )
    else:
        if kind == VmType.TDX and mmio_value is None:
            mmio_value = 0  # a TD's MMIO value, as VmView.for_type gives it
        decoded = app.client.decode_spte(
            value, vm=vm, mmio_value=mmio_value, memslots_generation=generation, level=level
        )
    show_decoding(app, decoded)
    if svg_file is not None:
        # The diagram is drawn from the same decoding the text shows.
        write_output(svg_file, bitfield_svg(decoded), "--svg")
        if not app.out.json_mode:
            app.out.note(f"wrote {svg_file}")


COMMANDS = [decode]
