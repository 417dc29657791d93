"""An SVG bit-field diagram of one 64-bit SPTE, drawn from a decode.

It takes the same decode object the text output prints -- the model's
`mmu.decode.SpteDecode` or the client's `SpteDecoding` from DecodeSpte, which
carry the same fields -- so text and picture always agree: bits 63..0 left to
right, one box per field coloured by kind, the field's value under its name,
and the decode's verdict as the caption. Each field's box carries
`data-lsb`/`data-msb` so tests (and tools) can read the layout back.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from html import escape
from typing import Final, Protocol

# Colour by field kind, keyed by the kind's enum name (the model's FieldKind and
# the API's SpteFieldKind share names).
COLOURS: Final[dict[str, str]] = {
    "PERMISSION": "#7fc97f",
    "MEMORY_TYPE": "#80cdc1",
    "ACCESSED_DIRTY": "#fdd87d",
    "SOFTWARE": "#beaed4",
    "ADDRESS": "#8fb8e8",
    "ENCRYPTION": "#c49a6c",
    "MMIO_GENERATION": "#fdae61",
    "MMIO_PATTERN": "#f4a6c6",
    "RESERVED": "#f46d6d",
    "IGNORED": "#e8e8e8",
}


class Field(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def lsb(self) -> int: ...
    @property
    def msb(self) -> int: ...
    @property
    def value(self) -> int: ...
    @property
    def kind(self) -> Enum: ...
    @property
    def meaning(self) -> str: ...


class Decoded(Protocol):
    @property
    def value(self) -> int: ...
    @property
    def kind(self) -> Enum: ...
    @property
    def verdict(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def misconfig(self) -> Sequence[str]: ...
    @property
    def fields(self) -> Sequence[Field]: ...


def label(kind: Enum) -> str:
    """ "mmio-generation", "non-present": the kind's name as the text output shows it."""
    return kind.name.lower().replace("_", "-")


BIT_W: Final = 18
LEFT: Final = 16
TOP: Final = 44
BOX_H: Final = 92
SHORT: Final = {
    "MMU-present": "MMU-P",
    "MMU-writable": "MMU-W",
    "host-writable": "Host-W",
    "A/D type": "A/D",
    "memory type": "MT",
    "saved R": "sav R",
    "saved X": "sav X",
    "saved XU": "sav XU",
    "ignored": "–",
    "MMIO pattern": "pattern",
    "relocated GPA": "reloc",
    "L1TF mask": "L1TF",
}
FONT: Final = "font-family:ui-monospace,Menlo,Consolas,monospace"


def _x(bit: int) -> int:
    """Left edge of `bit` (bit 63 is leftmost)."""
    return LEFT + (63 - bit) * BIT_W


def _fits(text: str, width_px: int) -> bool:
    return len(text) * 7 + 4 <= width_px


def _value_text(f: Field) -> str:
    return str(f.value) if f.msb - f.lsb < 3 else f"{f.value:#x}"


def _field_group(f: Field, misconfigured: bool) -> str:
    x = _x(f.msb)
    w = (f.msb - f.lsb + 1) * BIT_W
    cx = x + w / 2
    colour = COLOURS.get(f.kind.name, "#ffffff")
    stroke = "#b00020" if misconfigured else "#444"
    tip = escape(f"{f.name} [{f.msb}:{f.lsb}] = {f.value:#x}: {f.meaning}")
    style = f"{FONT};font-size:11px"
    name = f.name if _fits(f.name, w) else SHORT.get(f.name, f.name)
    if _fits(name, w):
        text = (
            f'<text x="{cx:.1f}" y="{TOP + 34}" text-anchor="middle" style="{style}">'
            f"{escape(name)}</text>"
        )
    else:  # a narrow field: its name runs upwards
        text = (
            f'<text transform="translate({cx + 4:.1f},{TOP + 66}) rotate(-90)" '
            f'style="{FONT};font-size:10px">{escape(name[:9])}</text>'
        )
    value = _value_text(f)
    shown = value if _fits(value, w) else ("…" if f.msb > f.lsb else str(f.value))
    return (
        f'<g class="field" data-name="{escape(f.name)}" data-kind="{label(f.kind)}" '
        f'data-lsb="{f.lsb}" data-msb="{f.msb}">'
        f"<title>{tip}</title>"
        f'<rect x="{x}" y="{TOP}" width="{w}" height="{BOX_H}" fill="{colour}" '
        f'stroke="{stroke}" stroke-width="{2 if misconfigured else 1}"/>'
        f"{text}"
        f'<text x="{cx:.1f}" y="{TOP + BOX_H - 8}" text-anchor="middle" '
        f'style="{style};fill:#222">{escape(shown)}</text>'
        "</g>"
    )


def bitfield_svg(decoded: Decoded, *, title: str | None = None) -> str:
    """The diagram as a standalone SVG document."""
    width = LEFT * 2 + 64 * BIT_W
    legend_y = TOP + BOX_H + 48
    height = legend_y + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" data-value="{decoded.value:#018x}">',
        f"<title>{escape(title or decoded.summary)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="18" style="{FONT};font-size:14px;font-weight:bold">'
        f"{escape(title or f'SPTE {decoded.value:#018x}')}</text>",
    ]
    for bit in range(63, -1, -1):
        if bit % 4 == 3 or bit == 0:
            parts.append(
                f'<text x="{_x(bit) + BIT_W / 2:.1f}" y="{TOP - 6}" text-anchor="middle" '
                f'style="{FONT};font-size:9px;fill:#555">{bit}</text>'
            )
    for f in sorted(decoded.fields, key=lambda f: -f.lsb):  # left to right: bit 63 first
        misconfigured = f.kind.name == "RESERVED" and f.value != 0
        parts.append(_field_group(f, misconfigured))
    caption = f"{label(decoded.kind)}: {decoded.verdict}"
    parts.append(
        f'<text class="caption" x="{LEFT}" y="{TOP + BOX_H + 22}" '
        f'style="{FONT};font-size:12px">{escape(caption)}</text>'
    )
    if decoded.misconfig:
        parts.append(
            f'<text x="{LEFT}" y="{TOP + BOX_H + 38}" style="{FONT};font-size:11px;fill:#b00020">'
            f"{escape('; '.join(decoded.misconfig))}</text>"
        )
    x = LEFT
    order = list(COLOURS)
    kinds = sorted({f.kind.name for f in decoded.fields if f.kind.name in COLOURS}, key=order.index)
    for name in kinds:
        text = name.lower().replace("_", "-")
        parts.append(
            f'<rect x="{x}" y="{legend_y}" width="12" height="12" fill="{COLOURS[name]}" '
            f'stroke="#444"/><text x="{x + 16}" y="{legend_y + 10}" '
            f'style="{FONT};font-size:10px">{text}</text>'
        )
        x += 24 + 7 * len(text)
    parts.append("</svg>")
    return "".join(parts)
