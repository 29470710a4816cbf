"""The architecture registry: which :class:`~codefusion.generator.Generator` class a model
directory (or a run config's ``model.architecture``) names.

``config.json``'s ``"architecture"`` key decides: ``"t5-baseline"`` is an
:class:`~codefusion.baseline.ARBaseline`, ``"masked"`` a
:class:`~codefusion.masked.MaskedDiffusion`; no key (``"codefusion"``) is a
:class:`~codefusion.pipeline.CodeFusion`. Classes are imported when asked for, so that naming
one costs nothing.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from codefusion.errors import ModelLoadError
from codefusion.generator import (
    CONFIG_FILE,
    DEFAULT_ARCHITECTURE,
    Generator,
    check_model_dir,
    read_config,
)

if TYPE_CHECKING:
    import torch

ARCHITECTURES: dict[str, str] = {
    "codefusion": "codefusion.pipeline:CodeFusion",
    "t5-baseline": "codefusion.baseline:ARBaseline",
    "masked": "codefusion.masked:MaskedDiffusion",
}


def generator_class(architecture: str) -> type[Generator]:
    """The class of an architecture name; a ``KeyError`` for an unknown one."""
    module, name = ARCHITECTURES[architecture].split(":")
    return getattr(importlib.import_module(module), name)


def architecture_of(path: str | Path) -> str:
    """The ``"architecture"`` of a model directory's config.json (``ModelLoadError`` for an
    unreadable one)."""
    d = read_config(Path(path))
    return d.get("architecture", DEFAULT_ARCHITECTURE)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """The generator a model directory holds, as its config.json says; ``ModelLoadError`` for a
    missing or inconsistent directory or an unknown architecture."""
    path = check_model_dir(path)
    arch = architecture_of(path)
    if arch not in ARCHITECTURES:
        raise ModelLoadError(
            f"{path / CONFIG_FILE}: unknown architecture {arch!r} "
            f"(expected one of {', '.join(ARCHITECTURES)})"
        )
    return generator_class(arch).from_pretrained(path, device=device)
