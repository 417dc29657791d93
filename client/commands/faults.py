"""`kvmmu fault`: one page fault, or a batch of them from a file (BatchFault).

Batch file format: one fault per line, the GPA (hex, decimal or a size such
as 4G) optionally followed by that fault's raw error code; `#` starts a
comment; blank lines are skipped. Lines without an error code use the one
the command line's flags give.

    # GPA              error code
    0x80000feb00000    0x2
    0x1000
    4G                 0x6
"""

from __future__ import annotations

from typing import IO, Final

import click
from rich.text import Text

from client.commands.app import App, pass_app
from client.commands.output import Col
from client.commands.params import ADDRESS, NUMBER, VM, parse_number
from client.commands.views import hx, level_name, outcome_text, show
from client.enums import ErrorCode, FaultOutcome
from client.results import BatchFaultResult, FaultResult

DEFAULT_BATCH: Final = 65536


def parse_batch(stream: IO[str], default_code: int) -> tuple[list[int], list[int]]:
    """GPAs and error codes from a batch file; BadParameter naming the line on a bad one."""
    gpas: list[int] = []
    codes: list[int] = []
    for number, raw in enumerate(stream, 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2:
            raise click.BadParameter(
                f"line {number}: expected 'GPA [ERROR_CODE]', got {raw.strip()!r}",
                param_hint="--from-file",
            )
        try:
            gpas.append(parse_number(words[0], sizes=True))
            codes.append(parse_number(words[1], sizes=False) if len(words) > 1 else default_code)
        except ValueError as exc:
            raise click.BadParameter(f"line {number}: {exc}", param_hint="--from-file") from None
        if gpas[-1] >> 64 or codes[-1] >> 64:
            raise click.BadParameter(
                f"line {number}: value does not fit in 64 bits", param_hint="--from-file"
            )
    return gpas, codes


def _fault_pairs(result: FaultResult) -> list[tuple[str, str | Text]]:
    out: list[tuple[str, str | Text]] = [
        ("outcome", outcome_text(result.outcome)),
        ("gfn", hx(result.gfn)),
        ("private", show("private", result.private)),
        ("level", level_name(result.level)),
        ("spte", hx(result.spte)),
        ("root", show("root", result.root)),
        ("req_level", level_name(result.req_level)),
        ("goal_level", level_name(result.goal_level)),
        ("fast_path", show("fast_path", result.fast_path)),
        ("mmio_check", show("mmio_check", result.mmio_check)),
        ("mmio_cache_hit", show("mmio_cache_hit", result.mmio_cache_hit)),
        ("dirty_marked", show("dirty_marked", result.dirty_marked)),
    ]
    if result.memory_fault is not None:
        mf = result.memory_fault
        out.append(("memory_fault", f"gpa {mf.gpa:#x} size {mf.size:#x} flags {mf.flags:#x}"))
    return out


def _show_fault(app: App, result: FaultResult) -> None:
    if app.out.json_mode:
        app.out.json(result.proto)
        return
    app.out.fields(_fault_pairs(result))
    if result.events:
        app.out.write("events:")
        for event in result.events:
            app.out.write(f"  {event.name}: {event.text}")
    if result.explanation:
        app.out.write("explanation:")
        for i, step in enumerate(result.explanation, 1):
            app.out.write(f"  {i}. {step.function}: {step.text}")


def _show_batch(app: App, gpas: list[int], result: BatchFaultResult, summary: bool) -> None:
    if app.out.json_mode:
        app.out.json_line(result.proto)
        return
    if summary:
        return
    rows: list[list[str | Text]] = [
        [
            hx(gpa),
            hx(row.gfn),
            outcome_text(row.outcome),
            str(row.level or "-"),
            # Level 0 is BatchFault's "no SPTE" (its SPTE reads 0); `fault` shows "-" there.
            hx(row.spte) if row.level else "-",
        ]
        for gpa, row in zip(gpas, result.rows(), strict=True)
    ]
    cols = [Col("GPA"), Col("GFN"), Col("OUTCOME"), Col("LEVEL", "right"), Col("SPTE")]
    app.out.table(cols, rows)


def _run_batch(
    app: App, vm: str, stream: IO[str], code: int, batch_size: int, summary: bool
) -> None:
    gpas, codes = parse_batch(stream, code)
    totals: dict[FaultOutcome, int] = {}
    with app.out.progress("faults", total=len(gpas)) as advance:
        for lo in range(0, len(gpas), batch_size):
            part = gpas[lo : lo + batch_size]
            result = app.client.batch_fault(vm, part, codes[lo : lo + batch_size])
            for outcome, count in result.counts().items():
                totals[outcome] = totals.get(outcome, 0) + count
            _show_batch(app, part, result, summary)
            advance(len(part))
    if not app.out.json_mode:
        counts = ", ".join(f"{o.name} {n}" for o, n in sorted(totals.items()))
        app.out.write(f"{len(gpas)} faults: {counts or 'none'}")


@click.command(
    "fault",
    epilog="\b\nExamples:\n  kvmmu fault td1 0x80000feb00000 --write   # TD shared bit 51: MMIO\n"
    "  kvmmu fault vm1 0x1000 --exec --explain\n"
    "  kvmmu fault vm1 0xfee00000 --rsvd --present     # MMIO SPTE hit (EPT misconfig)\n"
    "  kvmmu fault vm1 0x1000 --error-code 0x6\n"
    "  kvmmu fault vm1 --from-file faults.txt\n"
    "\b\nBatch file: one 'GPA [ERROR_CODE]' per line, '#' comments; lines without\n"
    "an error code use the flags given on the command line.",
)
@click.argument("vm", type=VM)
@click.argument("gpa", type=ADDRESS, required=False)
@click.option("--write", is_flag=True, help="PFERR_WRITE_MASK.")
@click.option("--exec", "fetch", is_flag=True, help="PFERR_FETCH_MASK (instruction fetch).")
@click.option("--user", is_flag=True, help="PFERR_USER_MASK.")
@click.option("--present", is_flag=True, help="PFERR_PRESENT_MASK.")
@click.option("--rsvd", is_flag=True, help="PFERR_RSVD_MASK (an MMIO SPTE / EPT misconfig).")
@click.option(
    "--private",
    is_flag=True,
    help="PFERR_PRIVATE_ACCESS (bit 49; TDX and SW_PROTECTED VMs derive it themselves).",
)
@click.option("--error-code", type=NUMBER, default=0, help="Raw PFERR_* bits (ORed with flags).")
@click.option("--explain", is_flag=True, help="Show each decision KVM took.")
@click.option(
    "--from-file",
    type=click.File("r"),
    help="Batch of faults: one 'GPA [ERROR_CODE]' per line ('-' for stdin).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Faults per BatchFault call with --from-file.",
)
@click.option("--summary", is_flag=True, help="With --from-file: only the outcome counts.")
@pass_app
def fault(
    app: App,
    vm: str,
    gpa: int | None,
    write: bool,
    fetch: bool,
    user: bool,
    present: bool,
    rsvd: bool,
    private: bool,
    error_code: int,
    explain: bool,
    from_file: IO[str] | None,
    batch_size: int,
    summary: bool,
) -> None:
    """Take a page fault on GPA (kvm_mmu_page_fault) and show what KVM did."""
    flags = (
        (ErrorCode.WRITE if write else 0)
        | (ErrorCode.FETCH if fetch else 0)
        | (ErrorCode.USER if user else 0)
        | (ErrorCode.PRESENT if present else 0)
        | (ErrorCode.RSVD if rsvd else 0)
        | (ErrorCode.PRIVATE if private else 0)
    )
    code = int(flags) | error_code
    if from_file is not None:
        if gpa is not None:
            raise click.UsageError("give either GPA or --from-file, not both")
        if explain:
            raise click.UsageError("--explain works on a single fault, not with --from-file")
        _run_batch(app, vm, from_file, code, batch_size, summary)
        return
    if gpa is None:
        raise click.UsageError("missing GPA (or --from-file FILE)")
    _show_fault(app, app.client.fault(vm, gpa, code, explain=explain))


COMMANDS = [fault]
