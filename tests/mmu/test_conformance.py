"""Every SPTE-level golden vector passes through `python -m mmu.conformance`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmu.conformance import run_case
from mmu.vectors import load_cases

REPO = Path(__file__).resolve().parents[2]


def spte_vector_files(vectors_dir: Path) -> list[Path]:
    files = sorted(vectors_dir.glob("spte-vectors*.json"))
    assert files, f"no spte-vectors*.json in {vectors_dir}"
    return files


def test_runner_passes_every_spte_vector(vectors_dir: Path) -> None:
    files = spte_vector_files(vectors_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "mmu.conformance", *map(str, files)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    last = proc.stdout.strip().splitlines()[-1]
    passed, failed = (int(part.split()[0]) for part in last.split(", "))
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert failed == 0 and passed > 4000, last


def test_runner_passes_every_tdp_scenario(vectors_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mmu.conformance", str(vectors_dir / "tdp-scenarios.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert last.endswith(", 0 failed") and int(last.split()[0]) >= 200, last


def test_runner_reports_a_wrong_expectation(vectors_dir: Path, tmp_path: Path) -> None:
    """A tampered case must fail, with the function, inputs, expected and got printed."""
    source = spte_vector_files(vectors_dir)[0]
    case = next(c for c in load_cases(source) if c.fn == "make_spte")
    wrong = dict(case.expected, spte="0x0000000000000001")
    tampered = tmp_path / "tampered.json"
    tampered.write_text(
        json.dumps(
            {
                "cases": [
                    {
                        "id": case.id,
                        "fn": case.fn,
                        "config": case.config,
                        "inputs": case.inputs,
                        "expected": wrong,
                    }
                ]
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mmu.conformance", str(tampered)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines()[-1] == "0 passed, 1 failed"
    assert "fn=make_spte" in proc.stdout and "spte: expected 0x1" in proc.stdout


def test_runner_rejects_empty_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text('{"cases": []}')
    proc = subprocess.run(
        [sys.executable, "-m", "mmu.conformance", str(empty)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout.strip() == "0 passed, 0 failed"


@pytest.mark.parametrize("fn", ["derive_host_config", "make_mmio_spte", "make_spte"])
def test_in_process_cases_pass(vectors_dir: Path, fn: str) -> None:
    cases = [c for f in spte_vector_files(vectors_dir) for c in load_cases(f) if c.fn == fn]
    assert cases
    failures = {c.id: run_case(c) for c in cases}
    assert not {k: v for k, v in failures.items() if v}
