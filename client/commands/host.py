"""`kvmmu host` and `kvmmu host profiles`."""

from __future__ import annotations

import click

from client.commands.app import App, pass_app
from client.commands.output import Col
from client.commands.views import pairs
from client.types import HostConfig, HostGlobals, HostProfile, VmTypeSupport
from kvmmu.v1 import host_pb2


def _show_setup(
    app: App, config: HostConfig, globals_: HostGlobals, vm_types: tuple[VmTypeSupport, ...]
) -> None:
    out = app.out
    out.fields(pairs(config), title="Module inputs (HostConfig)")
    out.fields(pairs(globals_), title="Derived globals (HostGlobals)")
    rows = [
        [s.vm_type.label, "yes" if s.supported else "no", s.unsupported_reason] for s in vm_types
    ]
    out.table([Col("VM TYPE"), Col("OFFERED"), Col("WHY NOT")], rows, title="VM types")


@click.group(
    "host",
    invoke_without_command=True,
    epilog="\b\nExamples:\n  kvmmu host\n  kvmmu --json host | jq .globals.shadow_mmio_value",
)
@pass_app
@click.pass_context
def host(ctx: click.Context, app: App) -> None:
    """Show the server's host: kvm module inputs, every derived mask, offered VM types."""
    if ctx.invoked_subcommand is not None:
        return
    info = app.client.get_host()
    if app.out.json_mode:
        app.out.json(info.proto)
        return
    app.out.fields(
        [
            ("profile", info.profile.removeprefix("hostProfiles/")),
            ("overridden", ", ".join(info.overridden_fields) or "-"),
        ]
    )
    _show_setup(app, info.config, info.globals, info.vm_types)


@host.command(
    "profiles",
    epilog="\b\nExamples:\n  kvmmu host profiles\n  kvmmu host profiles intel-tdx",
)
@click.argument("name", required=False)
@pass_app
def profiles(app: App, name: str | None) -> None:
    """List the ready-made host profiles, or show one profile in full."""
    found = list(app.client.list_host_profiles())
    if name is not None:
        match = [p for p in found if name in (p.profile_id, p.name)]
        if not match:
            known = ", ".join(p.profile_id for p in found)
            raise click.BadParameter(
                f"no profile {name!r}; the server has {known}", param_hint="NAME"
            )
        _show_profile(app, match[0])
        return
    if app.out.json_mode:
        app.out.json(host_pb2.ListHostProfilesResponse(host_profiles=[p.proto for p in found]))
        return
    rows = [
        [
            p.profile_id,
            p.config.cpu_vendor.label,
            p.config.mmu.label,
            p.config.kernel_layout.label,
            str(p.config.maxphyaddr),
            str(p.config.max_tdp_level),
            ",".join(s.vm_type.label for s in p.vm_types if s.supported),
        ]
        for p in found
    ]
    cols = [Col("PROFILE"), Col("VENDOR"), Col("MMU"), Col("LAYOUT"), Col("MAXPHYADDR", "right")]
    app.out.table([*cols, Col("TDP LEVELS", "right"), Col("VM TYPES")], rows)


def _show_profile(app: App, profile: HostProfile) -> None:
    if app.out.json_mode:
        app.out.json(profile.proto)
        return
    app.out.fields([("profile", profile.profile_id), ("description", profile.description)])
    _show_setup(app, profile.config, profile.globals, profile.vm_types)


COMMANDS = [host]
