"""Load any model directory of this project: CodeFusion or the autoregressive baseline.

``config.json``'s ``"architecture"`` key decides: ``"t5-baseline"`` is an
:class:`~codefusion.baseline.ARBaseline`; no key is a :class:`~codefusion.pipeline.CodeFusion`.
Both have ``generate(prompts, k=..., num_draws=..., steps=..., seed=..., allow_empty=...)``
returning ``Candidate`` lists, ``tokenizer``, ``config``, ``device``, ``to`` and
``save_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from codefusion.baseline import ARCHITECTURE, ARBaseline
from codefusion.errors import ModelLoadError
from codefusion.pipeline import CONFIG_FILE, CodeFusion


def architecture_of(path: str | Path) -> str | None:
    """The ``"architecture"`` of a model directory's config.json (None: CodeFusion, or no readable
    config, in which case CodeFusion's loader reports what is wrong)."""
    try:
        d = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d.get("architecture") if isinstance(d, dict) else None


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> CodeFusion | ARBaseline:
    """A CodeFusion or an ARBaseline, as the directory's config.json says; ``ModelLoadError``
    for a missing or inconsistent directory or an unknown architecture."""
    arch = architecture_of(path)
    if arch is None:
        return CodeFusion.from_pretrained(path, device=device)
    if arch == ARCHITECTURE:
        return ARBaseline.from_pretrained(path, device=device)
    raise ModelLoadError(
        f"{Path(path) / CONFIG_FILE}: unknown architecture {arch!r} "
        f"(expected none for CodeFusion or {ARCHITECTURE!r})"
    )
