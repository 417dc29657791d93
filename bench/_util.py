"""Helpers shared by the benchmarks: medians of repeated runs, a server to measure."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def median_seconds(fn: Callable[[], object], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def human(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def emit(figures: dict[str, Any]) -> None:
    """The last line of every benchmark: one JSON object."""
    print(json.dumps(figures, sort_keys=True))


def start_server(*args: str) -> tuple[subprocess.Popen[str], int]:
    """A quiet kvmmu-server on a free loopback port, and that port."""
    quiet = ("--listen", "127.0.0.1:0", "--log-level", "error")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.main", *quiet, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            return proc, int(line.rsplit(":", 1)[1])
    raise RuntimeError("kvmmu-server did not start")
