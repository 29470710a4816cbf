"""Shared fixtures. Tests build their own tiny fixtures; the real benchmark files are optional."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The fixture data live in bench/fixtures.py, shared with the smoke check (bench/smoke.py),
# which cannot import a conftest (pytest may not be installed where it runs).
from bench.fixtures import CF_CODES, CF_PROMPTS, write_fixture_data  # noqa: F401

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


# --- tiny artefacts built by the tests themselves -------------------------------------------


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory) -> Path:
    return write_fixture_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from codefusion.tokenizer import CodeTokenizer, train_bpe

    texts = (CF_CODES + CF_PROMPTS) * 20 + ["ls -la | grep foo", "x = [1, 2]\nprint(x)"]
    return CodeTokenizer(train_bpe(texts, vocab_size=300, min_frequency=1))


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    """A randomly initialised tiny CodeFusion (fresh per test, fixed seed)."""
    import torch

    from codefusion.config import preset
    from codefusion.pipeline import CodeFusion, build_model

    torch.manual_seed(0)
    return CodeFusion(build_model(preset("tiny", code_len=16), tiny_tokenizer), tiny_tokenizer)
