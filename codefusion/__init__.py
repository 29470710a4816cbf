"""CodeFusion: a diffusion model for code generation from natural language (EMNLP 2023)."""

from codefusion.config import CodeFusionConfig, preset
from codefusion.errors import GenerationError, ModelLoadError, UserError
from codefusion.pipeline import Candidate, CodeFusion

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
