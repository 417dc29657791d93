"""The `kvmmu` command line: a thin layer over the client library.

The root group reads the global options and builds one `App` (settings,
output, a client connected on first use); each command makes its call(s) and
formats the result. Client errors become one line on stderr and an exit
status here, once: 1 refused by the server, 2 bad usage (click), 3 server
unreachable. A traceback means a bug.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# gRPC's C core logs its own INFO lines (e.g. on TLS failures) to stderr; the CLI
# reports errors itself, one line each. Set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import click

from client._transport import DEFAULT_TARGET, DEFAULT_TIMEOUT, TlsConfig, check_target, read_pem
from client.commands import decode, events, faults, host, memory, misc, sptes, tooling, vms
from client.commands.app import EXIT_USAGE, App, Settings, describe, exit_status
from client.commands.output import Output
from client.errors import KvmmuError

EPILOG = """\b
Examples:
  kvmmu vm create --type tdx --id td1
  kvmmu memslot set td1 --slot 0 --gpa 0 --size 1G
  kvmmu fault td1 0x80000feb00000 --write     # shared bit 51: MMIO SPTE
  kvmmu sptes td1 --tree
  kvmmu decode 0x8000000000000006 --profile intel-ept
  kvmmu --json vm list | jq .

\b
Numbers are hex (0x...) or decimal; sizes and addresses also take 4K, 2M, 1G.
Exit status: 0 ok, 1 the server refused the request (or an output file
could not be written), 2 bad usage, 3 the server cannot be reached.
Shell completion: eval "$(kvmmu completion bash)" (or zsh, fish).
"""


class KvmmuGroup(click.Group):
    """The root group: turns client errors into one stderr line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a client error becomes its message and exit status."""
        try:
            return super().invoke(ctx)
        except KvmmuError as exc:
            app = ctx.find_object(App)
            server = app.settings.server if app else "?"
            timeout = app.settings.timeout if app else None
            tls = bool(app and app.settings.tls)
            text = describe(exc, server, timeout, tls=tls).replace("\n", " ")
            click.echo(f"kvmmu: {text}", err=True)
            ctx.exit(exit_status(exc))
        except KeyboardInterrupt:
            ctx.exit(130)
        except BrokenPipeError:
            # The reader went away (`kvmmu sptes vm | head`): stop quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(141)


def _tls(ca: Path | None, cert: Path | None, key: Path | None) -> TlsConfig | None:
    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if ca is None and cert is None:
        return None
    return TlsConfig(ca=ca, cert=cert, key=key)


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _check_server(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--server must be HOST:PORT before any channel is made: gRPC itself wraps a
    bad port silently and reports an empty host only in its C core's log."""
    try:
        return check_target(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _check_pem(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A TLS file must hold a PEM block; gRPC would only log its own error lines and
    then fail the connection as if the server could not be reached."""
    if value is not None:
        try:
            read_pem(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
    return value


@click.group(
    cls=KvmmuGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--server",
    envvar="KVMMU_SERVER",
    default=DEFAULT_TARGET,
    show_default=True,
    metavar="HOST:PORT",
    callback=_check_server,
    help="Server address (env KVMMU_SERVER).",
)
@click.option("--json", "json_mode", is_flag=True, help="Print responses as proto JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Deadline of each call in seconds.",
)
@click.option(
    "--tls-ca",
    type=_FILE,
    callback=_check_pem,
    help="PEM CA bundle: use TLS and trust this CA.",
)
@click.option(
    "--tls-cert", type=_FILE, callback=_check_pem, help="PEM client certificate (mutual TLS)."
)
@click.option("--tls-key", type=_FILE, callback=_check_pem, help="PEM key of --tls-cert.")
@click.option("--token", envvar="KVMMU_TOKEN", help="Bearer token (env KVMMU_TOKEN).")
@click.option(
    "--color",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Colour and tables: auto uses them on a terminal only.",
)
@click.version_option(package_name="kvmmu", prog_name="kvmmu")
@click.pass_context
def cli(
    ctx: click.Context,
    server: str,
    json_mode: bool,
    timeout: float,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    token: str | None,
    color: str,
) -> None:
    """kvmmu: the Linux KVM x86 MMU as a service.

    Create VMs, add memslots, take page faults, dump and decode SPTEs, zap,
    harvest dirty logs and watch kvmmmu events on a kvmmu server.
    """
    settings = Settings(
        server=server, timeout=timeout, tls=_tls(tls_ca, tls_cert, tls_key), token=token
    )
    app = App(settings, Output(json_mode=json_mode, color=color))
    ctx.obj = app
    ctx.call_on_close(app.close)


for module in (host, vms, memory, faults, sptes, decode, events, misc, tooling):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> int:
    """Entry point of the `kvmmu` console script; returns the exit status."""
    try:
        status = cli.main(prog_name="kvmmu", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # `kvmmu`, `kvmmu vm`: the help
        click.echo(exc.format_message(), err=True)
        return EXIT_USAGE
    except click.UsageError as exc:  # bad usage: one line, status 2
        path = exc.ctx.command_path if exc.ctx else "kvmmu"
        click.echo(f"{path}: {exc.format_message()} (see '{path} --help')", err=True)
        return EXIT_USAGE
    except click.ClickException as exc:  # e.g. an output file that cannot be written
        click.echo(f"kvmmu: {exc.format_message()}", err=True)
        return exc.exit_code
    except click.Abort:
        return 130
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
