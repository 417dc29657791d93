"""One self-contained HTML page about a VM: host, MMIO value, memslots drawn as a
guest-physical address map with its SPTEs over it, stats, and bit-field
diagrams of representative SPTEs. Inline CSS and SVG only; no scripts, no
external fetches.

SPTEs are aggregated into bins along the map with numpy, so millions of them
render as quickly as a handful.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from client.pictures.bitfield import bitfield_svg
from mmu.batch import SpteClass, classify_sptes
from mmu.decode import decode_spte
from mmu.vmtypes import VmView

MAP_W: Final = 1100
BINS_PER_SEGMENT: Final = 256
SERIES: Final = (  # label, colour
    ("4K", "#4e79a7"),
    ("2M", "#59a14f"),
    ("1G", "#9c755f"),
    ("MMIO", "#e15759"),
)


@dataclass(slots=True)
class SlotInfo:
    slot: int
    base_gfn: int
    npages: int
    flags: str
    backing: str


@dataclass(slots=True)
class VmReport:
    """Everything the page shows, whether it came from a server or an offline run."""

    title: str
    profile: str
    host_config: dict[str, Any]
    host_masks: dict[str, Any]
    vm_id: str
    vm_type: str
    view: VmView
    generation: int
    memslots: list[SlotInfo]
    gfns: npt.NDArray[np.uint64]
    levels: npt.NDArray[np.int8]
    values: npt.NDArray[np.uint64]
    stats: dict[str, int]
    notes: list[str] = field(default_factory=list)


def _fmt(name: str, value: Any, hex_ints: bool) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        as_hex = hex_ints or name.endswith(("_mask", "_value"))
        return f"{value:#x}" if as_hex and value > 9 else f"{value:,}"
    return escape(str(value))


def _table(rows: list[tuple[str, Any]], *, hex_ints: bool = True) -> str:
    """Rows of name/value; ints in hex when `hex_ints`, else only masks and values."""
    body = "".join(f"<tr><th>{escape(k)}</th><td>{_fmt(k, v, hex_ints)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _segments(report: VmReport) -> list[tuple[int, int]]:
    """GFN ranges worth drawing: memslots and where SPTEs are, gaps cut out."""
    spans = [(s.base_gfn, s.base_gfn + s.npages) for s in report.memslots]
    if len(report.gfns):
        pages = np.left_shift(
            np.uint64(1), (report.levels.astype(np.uint64) - np.uint64(1)) * np.uint64(9)
        )
        lo = report.gfns & ~np.uint64(511)
        hi = (report.gfns + pages + np.uint64(511)) & ~np.uint64(511)
        order = np.argsort(lo)
        lo, hi = lo[order], hi[order]
        start, end = int(lo[0]), int(hi[0])
        for a, b in zip(lo[1:].tolist(), hi[1:].tolist(), strict=True):
            if a > end + 512:
                spans.append((start, end))
                start, end = a, b
            else:
                end = max(end, b)
        spans.append((start, end))
    spans.sort()
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _coverage(
    gfns: npt.NDArray[np.uint64], levels: npt.NDArray[np.int8], a: int, b: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Per bin of [a, b): how many SPTEs touch it and how many pages they map there.

    A huge SPTE spreads over every bin it covers (a difference array), so a
    1G mapping is drawn as wide as it is; small ones are counted where they start.
    """
    counts = np.zeros(BINS_PER_SEGMENT, dtype=np.int64)
    covered = np.zeros(BINS_PER_SEGMENT, dtype=np.float64)
    if not len(gfns):
        return counts, covered
    pages = np.left_shift(1, 9 * (levels.astype(np.int64) - 1)).astype(np.float64)
    lo = gfns.astype(np.float64)
    inside = (lo + pages > a) & (lo < b)
    lo, pages = lo[inside], pages[inside]
    bin_pages = (b - a) / BINS_PER_SEGMENT
    first = np.clip(((lo - a) / bin_pages).astype(np.int64), 0, BINS_PER_SEGMENT - 1)
    last = np.clip(((lo + pages - 1 - a) / bin_pages).astype(np.int64), 0, BINS_PER_SEGMENT - 1)
    single = first == last
    np.add.at(counts, first[single], 1)
    np.add.at(covered, first[single], pages[single])
    diff = np.zeros(BINS_PER_SEGMENT + 1, dtype=np.int64)
    np.add.at(diff, first[~single], 1)
    np.add.at(diff, last[~single] + 1, -1)
    spanning = np.cumsum(diff[:-1])
    counts += spanning
    covered += spanning * bin_pages
    return counts, covered


def _address_map(report: VmReport) -> str:
    segments = _segments(report)
    if not segments:
        return "<p>No memslots and no SPTEs yet.</p>"
    weights = [math.log2(max(b - a, 2)) + 4 for a, b in segments]
    gap = 14
    label_w = 74
    usable = MAP_W - label_w - gap * (len(segments) - 1)
    widths = [usable * w / sum(weights) for w in weights]
    classes = classify_sptes(report.view, report.values, 1) if len(report.values) else None
    kind_masks: list[npt.NDArray[np.bool_]] = []
    if classes is not None:
        leaf = classes == SpteClass.LEAF
        kind_masks = [
            leaf & (report.levels == 1),
            leaf & (report.levels == 2),
            leaf & (report.levels == 3),
            classes == SpteClass.MMIO,
        ]
    lane_h, top = 26, 40
    height = top + 30 + lane_h * (len(SERIES) + 1) + 30
    parts = [
        f'<svg class="map" width="{MAP_W + 20}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    x = float(label_w)
    for (a, b), w in zip(segments, widths, strict=True):
        span = b - a
        parts.append(
            f'<rect x="{x:.1f}" y="{top}" width="{w:.1f}" height="{lane_h * 5 + 8}" '
            f'fill="#fafafa" stroke="#bbb"/>'
        )
        parts.append(f'<text x="{x:.1f}" y="{top - 6}" class="addr">{(a << 12):#x}</text>')
        parts.append(
            f'<text x="{x + w:.1f}" y="{top + lane_h * 5 + 24}" class="addr" '
            f'text-anchor="end">{(b << 12):#x}</text>'
        )
        for s in report.memslots:
            lo, hi = max(a, s.base_gfn), min(b, s.base_gfn + s.npages)
            if lo < hi:
                sx = x + w * (lo - a) / span
                sw = max(w * (hi - lo) / span, 1.5)
                parts.append(
                    f'<rect x="{sx:.1f}" y="{top + 4}" width="{sw:.1f}" height="{lane_h - 6}" '
                    f'fill="#f2cf5b" stroke="#8a6d00"><title>memslot {s.slot}: GPA '
                    f"{(s.base_gfn << 12):#x}-{((s.base_gfn + s.npages) << 12):#x} {s.flags} "
                    f"{s.backing} backing</title></rect>"
                    f'<text x="{sx + 3:.1f}" y="{top + 18}" class="lbl">slot {s.slot}</text>'
                )
        if kind_masks:
            bw = w / BINS_PER_SEGMENT
            for lane, ((label, colour), mask) in enumerate(zip(SERIES, kind_masks, strict=True)):
                counts, covered = _coverage(report.gfns[mask], report.levels[mask], a, b)
                y = top + lane_h * (lane + 1) + 4
                bin_pages = (b - a) / BINS_PER_SEGMENT
                for i in np.flatnonzero(counts).tolist():
                    fraction = min(1.0, covered[i] / bin_pages)
                    opacity = 0.3 + 0.7 * fraction
                    parts.append(
                        f'<rect x="{x + i * bw:.2f}" y="{y}" width="{max(bw, 1):.2f}" '
                        f'height="{lane_h - 6}" fill="{colour}" fill-opacity="{opacity:.2f}">'
                        f"<title>{int(counts[i])} {label} SPTEs near GPA "
                        f"{int(a + i * bin_pages) << 12:#x} ({fraction:.0%} mapped)</title></rect>"
                    )
        x += w + gap
    for lane, (label, colour) in enumerate((("memslots", "#f2cf5b"), *SERIES)):
        parts.append(
            f'<text x="{label_w - 8}" y="{top + lane_h * lane + 18}" class="lbl" '
            f'text-anchor="end" fill="{colour}">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _representatives(report: VmReport, per_kind: int = 2) -> str:
    if not len(report.values):
        return "<p>No SPTEs.</p>"
    classes = classify_sptes(report.view, report.values, 1)
    picks: list[tuple[str, int, int, int]] = []
    for label, mask in (
        ("4K leaf", (classes == SpteClass.LEAF) & (report.levels == 1)),
        ("2M leaf", (classes == SpteClass.LEAF) & (report.levels == 2)),
        ("1G leaf", (classes == SpteClass.LEAF) & (report.levels == 3)),
        ("MMIO", classes == SpteClass.MMIO),
        ("other", classes == SpteClass.NON_PRESENT),
    ):
        for i in np.flatnonzero(mask)[:per_kind].tolist():
            picks.append((label, int(report.gfns[i]), int(report.levels[i]), int(report.values[i])))
    out = []
    for label, gfn, level, value in picks:
        decoded = decode_spte(report.view, value, level)
        out.append(
            f"<figure><figcaption>{escape(label)} at GPA {gfn << 12:#x}</figcaption>"
            f"{bitfield_svg(decoded)}</figure>"
        )
    return "".join(out)


CSS: Final = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666} .grid{display:flex;gap:24px;flex-wrap:wrap}
table{border-collapse:collapse;font:12px ui-monospace,Menlo,Consolas,monospace}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left} th{background:#f4f4f4;font-weight:600}
.addr{font:10px ui-monospace,monospace;fill:#555} .lbl{font:11px ui-monospace,monospace}
figure{margin:12px 0} figcaption{font-weight:600;margin-bottom:4px}
"""


def render_html(report: VmReport) -> str:
    masks = [(k, v) for k, v in report.host_masks.items() if k != "setup_warnings"]
    slots = "".join(
        f"<tr><td>{s.slot}</td><td>{(s.base_gfn << 12):#x}</td><td>{(s.npages << 12):#x}</td>"
        f"<td>{escape(s.flags)}</td><td>{escape(s.backing)}</td></tr>"
        for s in report.memslots
    )
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.notes)
    vm_rows = [
        ("VM", report.vm_id),
        ("type", report.vm_type),
        ("MMIO value (kvm->arch.shadow_mmio_value)", report.view.shadow_mmio_value),
        ("host MMIO mask", report.view.host.shadow_mmio_mask),
        ("memslot generation", report.generation),
        ("SPTEs shown", f"{len(report.values):,}"),
    ]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{escape(report.title)}</title><style>{CSS}</style></head>
<body>
<h1>{escape(report.title)}</h1>
<div class="sub">host profile <b>{escape(report.profile)}</b> ·
{escape(report.view.host.layout.name)} SPTE layout</div>
{f"<ul>{notes}</ul>" if notes else ""}
<div class="grid">
<div><h2>VM</h2>{_table(vm_rows)}</div>
<div><h2>Statistics</h2>{_table(list(report.stats.items()), hex_ints=False)}</div>
</div>
<h2>Guest-physical address map</h2>
{_address_map(report)}
<h2>Memslots</h2>
<table><tr><th>slot</th><th>GPA</th><th>size</th><th>flags</th><th>backing</th></tr>{slots}
</table>
<h2>Representative SPTEs</h2>
{_representatives(report)}
<h2>Host</h2>
<div class="grid"><div>{_table(list(report.host_config.items()), hex_ints=False)}</div>
<div>{_table(masks)}</div></div>
</body></html>
"""
