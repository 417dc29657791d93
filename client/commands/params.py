"""Click parameter types: numbers in hex or decimal, sizes, VM ids with completion."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Final

import click
from click.shell_completion import CompletionItem

U64_MAX: Final = (1 << 64) - 1
PAGE_SHIFT: Final = 12
SUFFIXES: Final = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}
_SIZE_RE: Final = re.compile(
    r"(?P<num>[0-9][0-9_]*|0x[0-9a-f_]+)\s*(?P<unit>[kmgtpe]?)(i?b)?", re.I
)


def parse_number(text: str, *, sizes: bool) -> int:
    """0x1f, 0o17, 0b101, 1_000 and, with `sizes`, 4K / 2M / 1G / 4GiB (powers of 1024)."""
    word = text.strip().lower()
    try:
        return int(word, 0)
    except ValueError:
        pass
    match = _SIZE_RE.fullmatch(word) if sizes else None
    if match is None:
        kind = "a number or size (0x..., decimal, 4K, 2M, 1G)" if sizes else "a number"
        raise ValueError(f"{text!r} is not {kind}")
    return int(match["num"], 0) << SUFFIXES[match["unit"].upper()]


class Number(click.ParamType[int]):
    """An unsigned 64-bit integer: hex (0x...), decimal, octal, binary; sizes if allowed."""

    def __init__(self, *, sizes: bool = False, positive: bool = False, bits: int = 64) -> None:
        self.sizes = sizes
        self.positive = positive
        self.bits = bits
        self.name = "size" if sizes else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """The integer `value` stands for, or a usage error naming the parameter."""
        if isinstance(value, int):
            number = value
        else:
            try:
                number = parse_number(str(value), sizes=self.sizes)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if number < 0 or number >= 1 << self.bits:
            self.fail(f"{value!r} does not fit in {self.bits} unsigned bits", param, ctx)
        if self.positive and number == 0:
            self.fail(f"{value!r} must not be zero", param, ctx)
        return number


NUMBER: Final = Number()
ADDRESS: Final = Number(sizes=True)
SIZE: Final = Number(sizes=True, positive=True)
SLOT: Final = click.IntRange(0, 32767)
LEVEL: Final = click.IntRange(1, 5)


class VmId(click.ParamType[str]):
    """A VM id ("td1") or name ("vms/td1"); completes from the server's VM list."""

    name = "vm"

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        """The server's VM ids starting with `incomplete` (none if it cannot be reached)."""
        from client.client import connect  # noqa: PLC0415 - only when completing

        server = ctx.find_root().params.get("server") or os.environ.get("KVMMU_SERVER")
        try:
            with connect(server or "127.0.0.1:50051", timeout=1.0) as kvm:
                ids = [vm.vm_id for vm in kvm.list_vms()]
        except Exception:
            return []
        return [CompletionItem(i) for i in ids if i.startswith(incomplete)]


VM: Final = VmId()


class OutputFile(click.ParamType[Path]):
    """A file the command will write (--svg, --html), checked before anything runs.

    A missing directory would otherwise fail only after the text was printed or
    the server was asked. '-' is refused rather than taken as standard output,
    which carries the command's own text (or JSON) already.
    """

    name = "file"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        """`value` as a Path, or a usage error saying why it cannot be written."""
        text = os.fspath(value)
        if text == "-":
            self.fail("'-' (standard output) is not supported; give a file name", param, ctx)
        if not text:
            self.fail("the file name is empty", param, ctx)
        path = Path(text)
        if path.is_dir():
            self.fail(f"{text} is a directory", param, ctx)
        if path.exists():
            if not os.access(path, os.W_OK):
                self.fail(f"{text} is not writable", param, ctx)
            return path
        parent = path.parent
        if not parent.is_dir():
            problem = "is not a directory" if parent.exists() else "does not exist"
            self.fail(f"cannot create {text}: {parent} {problem}", param, ctx)
        if not os.access(parent, os.W_OK | os.X_OK):
            self.fail(f"cannot create {text}: directory {parent} is not writable", param, ctx)
        return path


OUTPUT_FILE: Final = OutputFile()


def write_output(path: Path, text: str, option: str) -> int:
    """Write `text` as UTF-8 to `path` and return its size in bytes.

    The path was checked up front (`OutputFile`), so what fails here is real
    I/O (disk full, ...): one line and exit status 1, as a refused request.
    """
    data = text.encode()
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise click.ClickException(
            f"cannot write {path} ({option}): {exc.strerror or exc}"
        ) from None
    return len(data)


def gpa_to_gfn_range(start: int, end: int, hint: str = "--end") -> tuple[int, int]:
    """The GFNs covering the byte range [start, end): start rounded down, end rounded up."""
    if end <= start:
        raise click.BadParameter(f"end {end:#x} must be above start {start:#x}", param_hint=hint)
    page = (1 << PAGE_SHIFT) - 1
    return start >> PAGE_SHIFT, (end + page) >> PAGE_SHIFT
