"""`scenario diff`: the same steps run on several VM types, compared step by step.

Each step gets one cell per run (outcome and SPTE, a memslot change's
result, a dump's size, ...). A dump step also compares the dumped SPTEs
themselves: entries are matched by (root, GFN, level), and every entry
whose value differs, or that only some runs hold, is listed with its
value in each run -- two dumps of two SPTEs each differ when their values
do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from client.commands.views import hx
from client.scenario.format import Step
from client.scenario.runner import RunResult
from client.scenario.show import brief

SpteKey = tuple[str, int, int]  # root, gfn, level


@dataclass(frozen=True, slots=True)
class SpteDiff:
    """One dumped SPTE that is not the same in every run; None: not in that run's dump."""

    root: str
    gfn: int
    level: int
    values: tuple[int | None, ...]

    @property
    def label(self) -> str:
        root = "" if self.root == "direct" else f" ({self.root} root)"
        return f"gfn {self.gfn:#x} level {self.level}{root}"


@dataclass(frozen=True, slots=True)
class DiffRow:
    """One step: a cell per run, and for a dump the SPTEs that differ."""

    step: Step
    cells: tuple[str, ...]
    sptes: tuple[SpteDiff, ...] | None = None  # None: not a dump every run made

    @property
    def differs(self) -> bool:
        return len(set(self.cells)) > 1 or bool(self.sptes)


def cell(values: dict[str, Any] | None) -> str:
    """What one run's step is summed up as; "-" if the run never got there."""
    if values is None:
        return "-"
    if "message" in values:
        return "refused"
    if "outcome" in values:
        spte = values.get("spte")
        return str(values["outcome"]) + ("" if spte is None else f" {spte:#x}")
    if "count" in values:
        return f"{values['count']} SPTEs"
    if "stats" in values:
        return " ".join(f"{k}={n}" for k, n in values["stats"].items() if n)
    return brief(values) or "ok"


def _spte_diffs(dumps: Sequence[list[dict[str, Any]]]) -> tuple[SpteDiff, ...]:
    by_run: list[dict[SpteKey, int]] = [
        {(e["root"], e["gfn"], e["level"]): e["value"] for e in dump} for dump in dumps
    ]
    keys = sorted({key for run in by_run for key in run}, key=lambda k: (k[1], k[2], k[0]))
    diffs = []
    for key in keys:
        values = tuple(run.get(key) for run in by_run)
        if len(set(values)) > 1:
            diffs.append(SpteDiff(*key, values))
    return tuple(diffs)


def diff(steps: Sequence[Step], runs: Sequence[RunResult]) -> list[DiffRow]:
    """One row per step of the scenario, comparing `runs` (one per VM type)."""
    by_index = [{s.step.index: s.values for s in run.steps} for run in runs]
    rows = []
    for step in steps:
        values = [run.get(step.index) for run in by_index]
        cells = tuple(cell(v) for v in values)
        dumps = [v.get("sptes") if v is not None else None for v in values]
        sptes = None
        if step.op == "dump" and all(d is not None for d in dumps):
            sptes = _spte_diffs([d for d in dumps if d is not None])
        rows.append(DiffRow(step, cells, sptes))
    return rows


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def json_records(rows: Sequence[DiffRow], types: Sequence[str]) -> list[dict[str, Any]]:
    """One object per step for --json: the cells by type, and a dump's differing SPTEs."""
    records = []
    for row in rows:
        record: dict[str, Any] = {
            "step": row.step.index,
            "op": f"{row.step.op} {row.step.vm}",
            "differs": row.differs,
            **dict(zip(types, row.cells, strict=True)),
        }
        if row.sptes is not None:
            record["sptes"] = [
                {
                    "root": d.root,
                    "gfn": f"{d.gfn:#x}",
                    "level": d.level,
                    **{t: _hex(v) for t, v in zip(types, d.values, strict=True)},
                }
                for d in row.sptes
            ]
        records.append(record)
    return records


def text_rows(rows: Sequence[DiffRow], limit: int = 50) -> list[list[str]]:
    """Table rows: marker (* differs), step, op, a cell per type; under a dump,
    one row per differing SPTE ("-": not in that dump), at most `limit` of them."""
    out = []
    for row in rows:
        marker = "*" if row.differs else " "
        out.append([marker, str(row.step.index), f"{row.step.op} {row.step.vm}", *row.cells])
        for d in (row.sptes or ())[:limit]:
            out.append(["*", "", f"  {d.label}", *(hx(v) for v in d.values)])
        more = len(row.sptes or ()) - limit
        if more > 0:
            blank = [""] * len(row.cells)
            out.append(["*", "", f"  ... {more} more SPTEs differ (--json lists all)", *blank])
    return out
