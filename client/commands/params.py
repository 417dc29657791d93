"""Click parameter types: numbers in hex or decimal, sizes, VM ids with completion."""

from __future__ import annotations

import os
import re
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


def gpa_to_gfn_range(start: int, end: int, hint: str = "--end") -> tuple[int, int]:
    """The GFNs covering the byte range [start, end): start rounded down, end rounded up."""
    if end <= start:
        raise click.BadParameter(f"end {end:#x} must be above start {start:#x}", param_hint=hint)
    page = (1 << PAGE_SHIFT) - 1
    return start >> PAGE_SHIFT, (end + page) >> PAGE_SHIFT
