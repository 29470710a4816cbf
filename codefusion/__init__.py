"""CodeFusion: a diffusion model for code generation from natural language (EMNLP 2023).

The names below are imported when first used (PEP 562), so that ``import codefusion`` (and the
``codefusion`` command's ``--help``) does not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from codefusion.errors import GenerationError, ModelLoadError, UserError

if TYPE_CHECKING:
    from codefusion.config import CodeFusionConfig, preset
    from codefusion.generator import Candidate
    from codefusion.pipeline import CodeFusion

_LAZY = {
    "Candidate": "codefusion.generator",
    "CodeFusion": "codefusion.pipeline",
    "CodeFusionConfig": "codefusion.config",
    "preset": "codefusion.config",
}

__all__ = [
    "Candidate",
    "CodeFusion",
    "CodeFusionConfig",
    "GenerationError",
    "ModelLoadError",
    "UserError",
    "preset",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'codefusion' has no attribute {name!r}")
