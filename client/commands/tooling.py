"""`kvmmu scenario`, `kvmmu trace decode` and `kvmmu report`: tools around the model."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import click
import numpy as np

from client.commands.app import EXIT_REFUSED, App, pass_app
from client.commands.output import Col, message_dict
from client.commands.params import NUMBER, OUTPUT_FILE, VM, write_output
from client.commands.spte_columns import model_host
from client.pictures.report import SlotInfo, VmReport, render_html
from client.scenario.backend import Backend, StepFailed
from client.scenario.diff import diff, json_records, text_rows
from client.scenario.format import Scenario, ScenarioError, load
from client.scenario.offline import OfflineBackend
from client.scenario.runner import RunResult, run
from client.scenario.server import ServerBackend
from client.scenario.show import brief, jsonable
from codec.decode import decode_to_proto
from mmu.decode import decode_spte
from mmu.profiles import PROFILES, host_from_profile
from mmu.state import STAT_NAMES
from mmu.trace_decode import annotate, sptes_in
from mmu.vm import Vm
from mmu.vmtypes import VmType, VmView


def _load(path: Path) -> Scenario:
    try:
        return load(path)
    except ScenarioError as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from None


def _backend(app: App, scenario: Scenario, offline: bool) -> Backend:
    if offline:
        return OfflineBackend(scenario)
    return ServerBackend(app.client, scenario)


def execute(app: App, scenario: Scenario, offline: bool) -> RunResult:
    try:
        backend = _backend(app, scenario, offline)
    except StepFailed as exc:
        return RunResult(scenario, setup_error=exc.message)
    try:
        return run(scenario, backend)
    finally:
        backend.close()


@click.group(
    "scenario",
    epilog="\b\nExamples:\n  kvmmu scenario run scenarios/generation-stale.toml --offline\n"
    "  kvmmu scenario diff scenarios/one-guest-many-vm-types.toml --vm-types default,tdx\n",
)
def scenario() -> None:
    """Run scenario files: operations and expectations, offline or against a server."""


@scenario.command(
    "run",
    epilog="\b\nExamples:\n  kvmmu scenario run scenarios/vmx-vs-tdx-mmio.toml --offline\n"
    "  KVMMU_PROFILE=intel-tdx make run &   # then, against the server:\n"
    "  kvmmu scenario run scenarios/vmx-vs-tdx-mmio.toml\n"
    "\b\nThe format is described in scenarios/README.md. Exit status 1 when an\n"
    "expectation fails (each difference is printed).",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--offline", is_flag=True, help="Run in process with the same model (no server).")
@pass_app
def scenario_run(app: App, file: Path, offline: bool) -> None:
    """Run FILE step by step and check its expectations."""
    result = execute(app, _load(file), offline)
    out = app.out
    if result.setup_error is not None:
        click.echo(f"{file}: {result.setup_error}", err=True)
        sys.exit(EXIT_REFUSED)
    for step in result.steps:
        if out.json_mode:
            values = {k: v for k, v in step.values.items() if k not in ("sptes", "message")}
            record = {
                "step": step.step.index,
                "op": step.step.op,
                "vm": step.step.vm,
                "ok": not step.failures,
                "failures": step.failures,
                "refused": step.values.get("message"),
                "result": jsonable("", values),
            }
            out.write(json.dumps(record, sort_keys=True))
            continue
        mark = "FAIL" if step.failures else "ok  "
        out.write(f"{mark} {step.step.label}: {brief(step.values)}")
        for failure in step.failures:
            out.write(f"       {failure}")
    failed = sum(1 for s in result.steps if s.failures)
    if not out.json_mode:
        where = "offline" if offline else app.settings.server
        out.write(
            f"{result.scenario.name}: {len(result.steps) - failed} steps ok, "
            f"{failed} failed ({where})"
        )
    if failed:
        sys.exit(EXIT_REFUSED)


@scenario.command(
    "diff",
    epilog="\b\nExamples:\n  kvmmu scenario diff scenarios/vmx-vs-tdx-mmio.toml "
    "--vm-types default,tdx --offline\n"
    "\b\nRuns the same steps with every declared VM of each type and prints, side by\n"
    "side, the outcome and SPTE of each step; lines marked * differ. Under a dump,\n"
    "one line per SPTE (by GFN and level) whose value differs between the types.",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--vm-types",
    default="default,tdx",
    show_default=True,
    help="Comma-separated VM types to compare.",
)
@click.option("--offline", is_flag=True, help="Run in process with the same model (no server).")
@pass_app
def scenario_diff(app: App, file: Path, vm_types: str, offline: bool) -> None:
    """Run FILE once per VM type and show where outcomes and SPTEs differ."""
    base = _load(file)
    names = [t.strip() for t in vm_types.split(",") if t.strip()]
    if len(names) < 2:
        raise click.BadParameter("give at least two types", param_hint="--vm-types")
    try:
        variants = [base.with_vm_type(t) for t in names]
    except ScenarioError as exc:
        raise click.BadParameter(exc.message, param_hint="--vm-types") from None
    types = [v.vms[0].type for v in variants]
    runs = [execute(app, v, offline) for v in variants]
    for t, r in zip(types, runs, strict=True):
        if r.setup_error:
            app.out.note(f"{t}: not run: {r.setup_error}")
    rows = diff(base.steps, runs)
    if app.out.json_mode:
        for record in json_records(rows, types):
            app.out.write(json.dumps(record))
        return
    app.out.table(
        [Col(""), Col("STEP", "right"), Col("OP"), *(Col(t.upper()) for t in types)],
        text_rows(rows),
    )


@click.group(
    "trace",
    epilog="\b\nExamples:\n  kvmmu trace decode trace.txt --profile intel-l1tf\n"
    "  trace-cmd report | kvmmu trace decode - --profile intel-tdx --vm-type tdx\n",
)
def trace() -> None:
    """Read kernel traces of the kvmmmu tracepoints."""


@trace.command(
    "decode",
    epilog="\b\nExamples:\n  trace-cmd report | kvmmu trace decode - --profile intel-ept\n"
    "  kvmmu trace decode trace.txt --profile intel-tdx --vm-type tdx\n"
    "\b\nEvery line passes through; each SPTE value of a kvmmmu event is followed by\n"
    "a '#kvmmu' line: kind, pfn or gfn, access, MMIO generation, and whether it is\n"
    "an MMIO SPTE for the VM's MMIO value. Lines that are not UTF-8 pass through\n"
    "byte for byte. With --json: one object per SPTE found (line number, line,\n"
    "field, and the DecodeSpteResponse as 'decoding').",
)
@click.argument("file", type=click.File("rb"))
@click.option(
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    default="intel-ept",
    show_default=True,
    help="The host the trace was taken on.",
)
@click.option("--mmio-value", type=NUMBER, help="The VM's MMIO value (default: its type's).")
@click.option(
    "--vm-type",
    type=click.Choice([t.cli_name for t in VmType]),
    default="default",
    show_default=True,
    help="The VM's type (tdx: MMIO value 0).",
)
@pass_app
def trace_decode(
    app: App, file: IO[bytes], profile: str, mmio_value: int | None, vm_type: str
) -> None:
    """Annotate every SPTE in FILE's kvmmmu events ('-' reads standard input)."""
    host = host_from_profile(profile)
    view = VmView.for_type(host, VmType.parse(vm_type))
    if mmio_value is not None:
        view = VmView(host=host, shadow_mmio_value=mmio_value, vm_type=view.vm_type)
    # A trace can hold bytes that are not UTF-8 (a task name, a damaged buffer):
    # surrogateescape carries them through the decoder and back out unchanged, and
    # newline="\n" splits at LF only, so CR bytes stay where they were.
    text = io.TextIOWrapper(file, encoding="utf-8", errors="surrogateescape", newline="\n")
    if app.out.json_mode:
        for record in _trace_records((line.rstrip("\n") for line in text), view):
            app.out.write(json.dumps(record, separators=(",", ":")))
        return
    sys.stdout.flush()
    raw = sys.stdout.buffer
    for line in text:  # the input as it was, plus the '#kvmmu' lines after SPTE lines
        _, *notes = annotate([line], view)
        raw.write(line.encode("utf-8", "surrogateescape"))
        if notes:
            ending = b"" if line.endswith("\n") else b"\n"
            raw.write(ending + "".join(f"{n}\n" for n in notes).encode("utf-8", "surrogateescape"))
    raw.flush()  # here, so a closed pipe is the command's BrokenPipeError, not one at exit


def _trace_records(lines: Iterable[str], view: VmView) -> Iterator[dict[str, Any]]:
    """One JSON object per SPTE of a kvmmmu event: where it is and its full decoding."""
    for number, line in enumerate(lines, 1):
        for found in sptes_in(line):
            decoded = decode_spte(view, found.value, found.level)
            yield {
                "line": number,
                "text": line.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                "field": found.label,
                "decoding": message_dict(decode_to_proto(view.host, decoded, None)),
            }


def _report_from_model(vm: Vm, title: str, profile: str, notes: list[str]) -> VmReport:
    dump = vm.dump()
    return VmReport(
        title=title,
        profile=profile,
        host_config=vm.host.config.to_dict(),
        host_masks=vm.host.derived_dict(),
        vm_id=vm.id,
        vm_type=vm.vm_type.kernel_name,
        view=VmView(vm.host, vm.shadow_mmio_value, vm.vm_type),
        generation=vm.generation,
        memslots=[
            _slot_info(
                s.id, s.base_gfn, s.npages, s.readonly, s.log_dirty, s.guest_memfd, s.backing_level
            )
            for s in vm.memslots()
        ],
        gfns=dump.gfns,
        levels=dump.levels,
        values=dump.values,
        stats=vm.stats(),
        notes=notes,
    )


def _slot_info(
    slot: int,
    base_gfn: int,
    npages: int,
    readonly: bool,
    log_dirty: bool,
    guest_memfd: bool,
    backing_level: int,
) -> SlotInfo:
    flags = [
        name
        for name, on in (
            ("readonly", readonly),
            ("dirty-log", log_dirty),
            ("guest_memfd", guest_memfd),
        )
        if on
    ]
    return SlotInfo(
        slot, base_gfn, npages, ",".join(flags) or "rw", {1: "4K", 2: "2M", 3: "1G"}[backing_level]
    )


def _chunks(app: App, vm: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    with app.client.stream_sptes(vm) as stream:
        for chunk in stream:
            yield chunk.gfns, chunk.levels, chunk.values


def _report_from_server(app: App, vm: str) -> VmReport:
    client = app.client
    server_host = client.get_host()
    host, _ = model_host(server_host)
    info = client.get_vm(vm)
    kvm_type = VmType(int(info.vm_type.kvm_type))
    parts = list(_chunks(app, vm))
    gfns = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.uint64)
    levels = (
        np.concatenate([p[1] for p in parts]).astype(np.int8) if parts else np.zeros(0, np.int8)
    )
    values = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.uint64)
    stats = client.get_vm_stats(vm)
    slots = [
        _slot_info(
            m.slot,
            m.base_gfn,
            m.npages,
            m.readonly,
            m.log_dirty_pages,
            m.guest_memfd,
            {"4K": 1, "2M": 2, "1G": 3}.get(m.backing_page_size.label, 1),
        )
        for m in client.list_memslots(vm)
    ]
    return VmReport(
        title=f"VM {info.vm_id} on {app.settings.server}",
        profile=server_host.profile,
        host_config=host.config.to_dict(),
        host_masks=host.derived_dict(),
        vm_id=info.vm_id,
        vm_type=kvm_type.kernel_name,
        view=VmView(host, info.mmio_value, kvm_type),
        generation=info.memslots_generation,
        memslots=slots,
        gfns=gfns,
        levels=levels,
        values=values,
        stats={n: int(getattr(stats, n)) for n in STAT_NAMES},
    )


@click.command(
    "report",
    epilog="\b\nExamples:\n  kvmmu report td1 --html td1.html\n"
    "  kvmmu report --scenario scenarios/dirty-logging.toml --html dirty.html\n"
    "\b\nOne self-contained HTML file (inline CSS and SVG, no scripts): host and MMIO\n"
    "value, memslots on a guest-physical address map with the SPTEs over it,\n"
    "statistics, and bit-field diagrams of representative SPTEs. With --json it\n"
    'prints {"path": FILE, "bytes": SIZE} instead of the \'wrote\' line.',
)
@click.argument("vm", type=VM, required=False)
@click.option(
    "--html",
    "html_file",
    type=OUTPUT_FILE,
    required=True,
    help="Where to write the page.",
)
@click.option(
    "--scenario",
    "scenario_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run this scenario offline and report on one of its VMs (VM: its id).",
)
@pass_app
def report(app: App, vm: str | None, html_file: Path, scenario_file: Path | None) -> None:
    """Write an HTML report of VM (on the server), or of a scenario's VM (offline)."""
    if scenario_file is not None:
        sc = _load(scenario_file)
        backend = OfflineBackend(sc)
        result = run(sc, backend)
        if result.setup_error:
            raise click.ClickException(result.setup_error)
        vm_id = vm or sc.vms[0].id
        if vm_id not in backend.vms:
            raise click.BadParameter(f"the scenario has no VM {vm_id!r}", param_hint="VM")
        failed = [s.step.label for s in result.steps if s.failures]
        notes = [
            f"scenario {sc.name}: {len(result.steps)} steps, {len(failed)} with failed expectations"
        ]
        page = render_html(
            _report_from_model(backend.vms[vm_id], f"{sc.name}: VM {vm_id}", sc.profile, notes)
        )
    else:
        if vm is None:
            raise click.UsageError("give a VM (on the server) or --scenario FILE")
        page = render_html(_report_from_server(app, vm))
    size = write_output(html_file, page, "--html")
    if app.out.json_mode:
        app.out.write(json.dumps({"path": str(html_file), "bytes": size}))
    else:
        app.out.write(f"wrote {html_file} ({size // 1024} KiB)")


COMMANDS = [scenario, trace, report]
