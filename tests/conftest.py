"""Shared fixtures. Tests build their own tiny fixtures; the real benchmark files are optional."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _real_data_dir() -> Path | None:
    env = os.environ.get("CODEFUSION_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data" / "prose-codefusion")
    for c in candidates:
        if (c / "benchmarks").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The released benchmark folder; tests that need it skip cleanly when it is absent."""
    d = _real_data_dir()
    if d is None:
        pytest.skip("real benchmark data not found (set CODEFUSION_DATA)")
    return d
