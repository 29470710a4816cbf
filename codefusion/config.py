"""Model configuration: one dataclass, saved as ``config.json`` beside the weights.

Presets: ``paper`` (about 75M parameters, the paper's layer counts) and ``tiny`` (CPU, tests).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codefusion.errors import UserError
from codefusion.fields import above, at_least, check_fields, unit


class ConfigError(UserError):
    """A configuration is invalid or does not match what it is used with."""


# Keys that config.json files written before they were dropped still hold; nothing read them.
_LEGACY_KEYS = ("mask_id", "extra")
# Options of rejected ablation rows, removed since (the ablation table names the commit its rows
# ran at): a model saved with the option off loads; one that used it is an error.
_REMOVED_OPTIONS = {"tie_embeddings": False, "length_head": False, "schedule_offset": 1e-4}


PREDICTIONS = ("x0", "eps", "tokens")
_SIZES = ("vocab_size", "encoder_dim", "encoder_layers", "encoder_heads", "encoder_ff")
_SIZES += ("max_prompt_len", "hidden_dim", "heads", "ff_mult", "denoiser_layers")
_SIZES += ("decoder_layers", "latent_dim", "code_len")
SIZE_RANGES = {name: at_least(1) for name in _SIZES} | {
    "pad_id": at_least(0),
    "eos_id": at_least(0),
    "dropout": unit(high_inclusive=False),
}
MODEL_RANGES = SIZE_RANGES | {"diffusion_steps": at_least(1), "embedding_init_std": above(0)}


@dataclass
class StackSizes:
    """Sizes of E, N, D, H and L: CodeFusion's, and those of the masked model built on the same
    stack (codefusion/masked.py), so that the two are compared at equal size."""

    # Vocabulary (set from the tokenizer when a model is built for it).
    vocab_size: int = 16384
    pad_id: int = 0
    eos_id: int = 1
    # Encoder E: a T5 encoder. ``encoder`` holds a full ``T5Config`` dict when the encoder came
    # from a local checkpoint (its own sizes win over the fields below).
    encoder_dim: int = 512
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_ff: int = 2048
    encoder: dict[str, Any] | None = None
    max_prompt_len: int = 128
    # Denoiser N and decoder D share a width; L maps tokens into a ``latent_dim`` space where
    # the diffusion happens, and H reads D's output back out of it.
    hidden_dim: int = 384
    heads: int = 6
    ff_mult: int = 4
    denoiser_layers: int = 10
    decoder_layers: int = 6
    latent_dim: int = 128
    code_len: int = 128
    dropout: float = 0.1

    def check_sizes(self, ranges: dict, choices: dict | None = None) -> None:
        check_fields(self, "", ConfigError, ranges, choices or {})
        if self.hidden_dim % self.heads:
            raise ConfigError(
                f"hidden_dim {self.hidden_dim} is not divisible by heads {self.heads}"
            )
        if self.encoder is None and self.encoder_dim % self.encoder_heads:
            raise ConfigError("encoder_dim must be divisible by encoder_heads")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_known(cls, d: dict[str, Any], what: str = "model config"):
        """``cls(**d)``, with a one-line error for a key ``cls`` does not have."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown {what} keys: {', '.join(unknown)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(str(e)) from None


@dataclass
class CodeFusionConfig(StackSizes):
    """Sizes of E, N, D, H, L (StackSizes) and of the diffusion process."""

    # L's rows start at N(0, embedding_init_std^2); None: 1/sqrt(Dz). L(y) is normalised to
    # norm sqrt(Dz) either way, so this only sets how fast AdamW turns the rows: at std 1 a step
    # of size lr turns a row by about lr / sqrt(Dz) radians and L stays close to a random
    # codebook; at 1/sqrt(Dz) rows have norm ~1 and turn sqrt(Dz) times faster (README ablation).
    embedding_init_std: float | None = None
    # Self-conditioning (Chen et al., Analog Bits): N also reads its own previous estimate of x0.
    self_condition: bool = True
    # A pointer over the prompt's tokens mixed into H's distribution (model.CopyHead): a literal
    # of the prompt can be copied. Needs a tokenizer that makes literals the same tokens in
    # prompt and code (the ``literal`` scheme).
    copy: bool = False
    # Diffusion: square-root schedule over T steps; N predicts x0 (see diffusion.py for why),
    # eps (the paper's literal reading), or a distribution over tokens whose expected L is x0
    # (``tokens``: CDCD's score interpolation; with ``copy`` N points into the prompt too).
    diffusion_steps: int = 1200
    prediction: str = "x0"

    def __post_init__(self) -> None:
        self.check_sizes(MODEL_RANGES, {"prediction": PREDICTIONS})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodeFusionConfig:
        d = {k: v for k, v in d.items() if k not in _LEGACY_KEYS}
        for key, off in _REMOVED_OPTIONS.items():
            if key in d and d.pop(key) != off:
                raise ConfigError(
                    f"{key} is an option of a rejected ablation row, removed from this version "
                    "(results/ablation-cf/README.md names the commit that has it)"
                )
        return cls.from_known(d)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> CodeFusionConfig:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read model config ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: model config must be a JSON object")
        return cls.from_dict(d)


# The options of CodeFusion's own model, beyond the stack sizes it shares with the other
# architectures built on it (its twins of train --baseline / --masked leave them out).
_SHARED = {f.name for f in dataclasses.fields(StackSizes)}
CODEFUSION_ONLY = tuple(
    f.name for f in dataclasses.fields(CodeFusionConfig) if f.name not in _SHARED
)


PRESETS: dict[str, dict[str, Any]] = {
    # ~75M parameters with a 16K vocabulary (see `codefusion params --preset paper`).
    "paper": {},
    # A few hundred thousand parameters: trains in minutes on a laptop CPU.
    "tiny": dict(
        encoder_dim=64,
        encoder_layers=2,
        encoder_heads=4,
        encoder_ff=128,
        hidden_dim=64,
        heads=4,
        ff_mult=2,
        denoiser_layers=2,
        decoder_layers=1,
        latent_dim=32,
        code_len=32,
        max_prompt_len=48,
        dropout=0.0,
    ),
    # A CPU-scale model (2.33M parameters with a 1K vocabulary): the README's CPU results.
    "small": dict(
        encoder_dim=128,
        encoder_layers=2,
        encoder_heads=4,
        encoder_ff=256,
        hidden_dim=128,
        heads=4,
        ff_mult=4,
        denoiser_layers=4,
        decoder_layers=2,
        latent_dim=64,
        code_len=24,
        max_prompt_len=64,
        dropout=0.0,
    ),
}


def preset(name: str, **overrides: Any) -> CodeFusionConfig:
    """A preset config with overrides (e.g. the tokenizer's vocabulary size)."""
    return CodeFusionConfig.from_dict(preset_sizes(name) | overrides)


def preset_sizes(name: str) -> dict[str, Any]:
    """The preset's stack sizes (StackSizes fields), for any model built on the stack."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
