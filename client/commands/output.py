"""How the CLI prints: rich tables and colour on a terminal, plain aligned text when
piped, proto JSON with `--json`, and progress bars on stderr (terminals only)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf import json_format
from google.protobuf.message import Message
from rich import box
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

Cell = str | Text


@dataclass(frozen=True, slots=True)
class Col:
    """A table column: header and alignment ("left" or "right")."""

    header: str
    justify: str = "left"


class Advance(Protocol):
    """What a progress context yields: call it with the units just done."""

    def __call__(self, done: int) -> None: ...


def message_dict(msg: Message) -> dict[str, Any]:
    """A message as the JSON object of the proto JSON mapping, with proto field names,
    unset fields included (as their defaults), keys in the .proto's field order."""
    data = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _in_field_order(msg, data)


def _in_field_order(msg: Message, data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        if fd.name not in data:
            continue
        value = data[fd.name]
        if fd.message_type is not None and isinstance(value, list):
            value = [
                _in_field_order(m, v) for m, v in zip(getattr(msg, fd.name), value, strict=True)
            ]
        elif fd.message_type is not None and isinstance(value, dict) and not fd.is_repeated:
            value = _in_field_order(getattr(msg, fd.name), value)
        out[fd.name] = value
    return out


class Output:
    """Where and how a command prints; one per CLI invocation."""

    def __init__(self, *, json_mode: bool, color: str) -> None:
        self.json_mode = json_mode
        force = {"always": True, "never": False}.get(color)
        self.console = Console(
            force_terminal=force,
            no_color=color == "never",
            markup=False,
            highlight=False,
            soft_wrap=False,
        )
        self.err = Console(stderr=True, markup=False, highlight=False, force_terminal=force)
        self.rich = self.console.is_terminal

    # -- JSON ------------------------------------------------------------
    def json(self, msg: Message) -> None:
        """One response as an indented JSON object."""
        self.write(json.dumps(message_dict(msg), indent=2))

    def json_line(self, msg: Message) -> None:
        """One stream message as a JSON object on one line."""
        self.write(json.dumps(message_dict(msg), separators=(",", ":")))

    # -- text ------------------------------------------------------------
    def write(self, text: str) -> None:
        """A line of plain text (no markup, no highlighting)."""
        if self.rich:
            self.console.print(text, markup=False, highlight=False)
        else:
            sys.stdout.write(text + "\n")

    def flush(self) -> None:
        """Push buffered lines out (followed streams)."""
        self.console.file.flush()
        sys.stdout.flush()

    def styled(self, text: Cell) -> None:
        """A line that may carry styles (dropped when piped)."""
        if self.rich:
            self.console.print(text)
        else:
            self.write(text.plain if isinstance(text, Text) else text)

    def render(self, renderable: RenderableType) -> None:
        """A rich renderable (trees); when piped, rendered without colour."""
        self.console.print(renderable)

    def note(self, text: str) -> None:
        """A message for people on stderr (dim on a terminal)."""
        self.err.print(Text(text, style="dim"))

    # -- tables ----------------------------------------------------------
    def table(self, cols: Sequence[Col], rows: Sequence[Sequence[Cell]], title: str = "") -> None:
        """Aligned columns: a rich table on a terminal, plain two-space gaps when piped."""
        if self.rich:
            table = Table(
                box=box.SIMPLE_HEAD, pad_edge=False, title=title or None, title_justify="left"
            )
            for col in cols:
                table.add_column(col.header, justify=col.justify, no_wrap=True)  # type: ignore[arg-type]
            for row in rows:
                table.add_row(*row)
            self._print_whole(table)
            return
        if title:
            self.write(title)
        self._plain([[c.header for c in cols], *rows], [c.justify for c in cols])

    def _print_whole(self, table: Table) -> None:
        # Never squeeze columns into ellipses (a cut SPTE is worse than a long line).
        wide = self.console.options.update_width(1000)
        needed = Measurement.get(self.console, wide, table).maximum
        width = self.console.width
        self.console.width = max(width, needed)
        try:
            self.console.print(table)
        finally:
            self.console.width = width

    def fields(self, pairs: Sequence[tuple[str, Cell]], title: str = "") -> None:
        """A key/value listing, keys aligned."""
        if self.rich:
            table = Table(box=None, show_header=False, title=title or None, title_justify="left")
            table.add_column(style="bold")
            table.add_column()
            for key, value in pairs:
                table.add_row(key, value)
            self._print_whole(table)
            return
        if title:
            self.write(title)
        self._plain([[k, v] for k, v in pairs], ["left", "left"])

    def _plain(self, rows: Sequence[Sequence[Cell]], justify: Sequence[str]) -> None:
        text = [[c.plain if isinstance(c, Text) else c for c in row] for row in rows]
        widths = [max((len(r[i]) for r in text), default=0) for i in range(len(justify))]
        for row in text:
            cells = [
                cell.rjust(w) if j == "right" else cell.ljust(w)
                for cell, w, j in zip(row, widths, justify, strict=True)
            ]
            self.write("  ".join(cells).rstrip())

    # -- progress --------------------------------------------------------
    @contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Advance]:
        """A progress bar (or spinner without a total) on stderr, only on a terminal."""
        if not self.err.is_terminal:
            yield lambda done: None
            return
        columns = [SpinnerColumn(), TextColumn(description), BarColumn(), MofNCompleteColumn()]
        with Progress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda done: bar.advance(task, done)
