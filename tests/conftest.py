"""Shared test fixtures: where the golden vectors live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VECTORS = Path(os.environ.get("KVMMU_VECTORS", REPO.parent / "shared" / "vectors"))


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(f"golden vectors not found at {VECTORS} (set KVMMU_VECTORS)")
    return VECTORS
