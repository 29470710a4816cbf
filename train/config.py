"""Run configuration: a YAML file with one section per training stage.

    name: cf-tiny                  # run folder: <out_dir>/<name>
    language: cf                   # cf | bash | python
    model: {preset: tiny, code_len: 32}   # architecture: codefusion (default) | t5-baseline
    tokenizer: {path: runs/tokenizers/cf-2k, vocab_size: 2000, languages: [cf]}
    pretrain: {max_steps: 300, batch_size: 64, uncond_ratio: 0.5, mask_rate: 0.3}
    finetune: {max_steps: 300, batch_size: 64}

Any key can be overridden on the command line: ``--set finetune.max_steps=50``.

``model.architecture`` picks what is trained: ``codefusion`` (the default) or ``t5-baseline``,
the autoregressive baseline of the size of ``model.preset`` (a CodeFusion preset name), with the
same tokenizer, data, stages, optimizer and schedule: the same config trains both on equal
terms (``python -m train --config C --baseline`` sets it and names the run ``<name>-ar``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from codefusion.errors import UserError


class RunConfigError(UserError):
    """A run config file or override is invalid."""


def architecture(name: str | None) -> str:
    """A run config's ``model.architecture`` (None: the default), checked against the
    registry (codefusion/auto.py)."""
    from codefusion.auto import ARCHITECTURES
    from codefusion.generator import DEFAULT_ARCHITECTURE

    name = DEFAULT_ARCHITECTURE if name is None else name
    if name not in ARCHITECTURES:
        raise RunConfigError(
            f"model.architecture must be one of {', '.join(ARCHITECTURES)}, not {name!r}"
        )
    return name


@dataclass
class StageConfig:
    """One training stage (pre-training or fine-tuning)."""

    max_steps: int = 1000
    batch_size: int = 64
    lr: float = 5e-4  # the paper's
    weight_decay: float = 0.0  # the paper's: no weight decay
    warmup_steps: int = 100
    grad_clip: float = 1.0
    # Loss weight of the pad positions after the first end token, in total per row, against 1
    # for the content (diffusion.py). 0.1 left pad x0 so poorly denoised that samples drifted
    # and never placed the end token (CF small on CPU: top-1 1.1%); 1.0 keeps content and pad
    # on an equal footing without letting pad dominate.
    pad_weight: float = 1.0
    # Pre-training only: share of rows trained unconditionally (E(s) := noise); the rest are CPD.
    uncond_ratio: float = 0.5
    mask_rate: float = 0.3
    # Fine-tuning only: share of pairs trained without their prompt (classifier-free guidance).
    prompt_dropout: float = 0.0
    # Validation: a held-out share of the training data (never the test split).
    val_fraction: float = 0.02
    val_every: int = 200
    val_batches: int = 8
    ckpt_every: int = 200
    log_every: int = 10
    # EMA of the weights with a warm-up (train/ema.py), exported instead of the raw weights.
    ema_decay: float | None = None  # e.g. 0.999; None: no EMA
    # --- the objective (codefusion/diffusion.py; defaults chosen on held-out data, README) ---
    # Defaults: the README's ablation (held-out top-5 and valid top-1 on the CPU-scale protocol).
    noise_weighting: str = "x0"  # x0 | snr (the paper's ||eps_hat - eps||^2)
    decoder_input: str = "clean"  # clean | x0_hat (the paper's reading)
    self_cond_prob: float = 0.5  # share of batches that self-condition (model: self_condition)
    # Training steps are drawn from [min_t * T, T): the nearly clean steps, where x_t alone
    # gives the answer away, are left out, so that N must lean on the prompt (DINOISER).
    min_t: float = 0.0
    # Fine-tuning only: a model directory whose top-1 for each training prompt replaces the gold
    # (sequence-level distillation; train/data.py).
    distill_from: str | None = None
    # Generation on the held-out share at each validation (fine-tuning): items (0 = none),
    # sampling steps and draws. Logs val/top1, val/top5, val/valid_top1, val/length_acc.
    val_generate: int = 0
    val_generate_steps: int = 20
    val_generate_draws: int = 10
    # The stage's export: "last" (the final step) or "best" (the validation with the highest
    # held-out val/top5, which selects fine-tuning steps by generation; needs val_generate).
    export: str = "last"
    on_nan: str = "stop"  # stop | skip
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.on_nan not in ("stop", "skip"):
            raise RunConfigError(f"on_nan must be 'stop' or 'skip', not {self.on_nan!r}")
        if not all(
            0.0 <= v <= 1.0 for v in (self.uncond_ratio, self.mask_rate, self.prompt_dropout)
        ):
            raise RunConfigError("uncond_ratio, mask_rate and prompt_dropout must lie in [0, 1]")
        if self.max_steps < 1 or self.batch_size < 1:
            raise RunConfigError("max_steps and batch_size must be positive")
        from codefusion.diffusion import DECODER_INPUTS, NOISE_WEIGHTINGS

        choices = {
            "noise_weighting": tuple(NOISE_WEIGHTINGS),
            "decoder_input": DECODER_INPUTS,
            "export": ("last", "best"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise RunConfigError(
                    f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}"
                )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise RunConfigError(f"ema_decay must lie in (0, 1), not {self.ema_decay}")
        if not 0.0 <= self.self_cond_prob <= 1.0:
            raise RunConfigError("self_cond_prob must lie in [0, 1]")
        if self.val_generate_draws < 1 or self.val_generate_steps < 1:
            raise RunConfigError("val_generate_draws and val_generate_steps must be positive")
        if self.export == "best" and self.val_generate < 1:
            raise RunConfigError("export: best selects by held-out generation: set val_generate")

    def pick(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """The settings ``keys`` as keyword arguments (for whatever declares that it takes them)."""
        return {k: getattr(self, k) for k in keys}


@dataclass
class TokenizerConfig:
    path: str = "runs/tokenizers/all-16k"
    vocab_size: int = 16384
    languages: list[str] = field(default_factory=lambda: ["cf", "bash", "python"])
    # literal: digits, punctuation and whitespace cut apart, so that a literal is the same tokens
    # in prompt and code; bytelevel: GPT-2's (the paper's CodeT5 kind). codefusion/tokenizer.py.
    scheme: str = "literal"


@dataclass
class RunConfig:
    name: str = "run"
    language: str = "cf"
    out_dir: str = "runs"
    data_dir: str | None = None  # else $CODEFUSION_DATA
    python_corpus: str | None = None  # built from the stdlib when absent
    seed: int = 0
    encoder_path: str | None = None  # a local T5-family checkpoint for E
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "paper"})
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pretrain: StageConfig | None = field(default_factory=StageConfig)
    finetune: StageConfig | None = field(default_factory=StageConfig)
    # Trainer: "auto" picks the GPU when present; precision "auto" = bf16-mixed on GPU, fp32 on CPU.
    accelerator: str = "auto"
    devices: Any = "auto"  # per machine
    num_nodes: int = 1  # machines; the run has devices x num_nodes processes under DDP
    strategy: str = "auto"  # e.g. "ddp" for several GPUs (Lightning's own strategies)
    precision: str = "auto"
    # torch.compile E, N and D in place (train/run.py: compile_model); pays on GPU for long runs.
    compile: bool = False
    compile_backend: str = "inductor"  # tests and CPU smoke runs: "eager" / "aot_eager"

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def _build(cls, d: dict[str, Any], where: str):
    if not isinstance(d, dict):
        raise RunConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise RunConfigError(f"{where}: unknown keys {', '.join(unknown)}")
    kwargs = {}
    for k, v in d.items():
        if k == "tokenizer":
            v = _build(TokenizerConfig, v, f"{where}.tokenizer")
        elif k in ("pretrain", "finetune") and v is not None:
            v = _build(StageConfig, v, f"{where}.{k}")
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise RunConfigError(f"{where}: {e}") from None


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if d.get(k) is None:
            d[k] = {}
        d = d[k]
    d[keys[-1]] = value


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise RunConfigError(f"config file {p} not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise RunConfigError(f"{p}: invalid YAML ({e})") from None
    for item in overrides:
        if "=" not in item:
            raise RunConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        _set(raw, key.strip(), yaml.safe_load(value))
    cfg = _build(RunConfig, raw, str(path or "config"))
    if cfg.language not in ("cf", "bash", "python"):
        raise RunConfigError(f"language must be cf, bash or python, not {cfg.language!r}")
    if isinstance(cfg.num_nodes, bool) or not isinstance(cfg.num_nodes, int) or cfg.num_nodes < 1:
        raise RunConfigError(f"num_nodes must be a positive whole number, not {cfg.num_nodes!r}")
    if not isinstance(cfg.model, dict):
        raise RunConfigError(f"model: expected a mapping, got {type(cfg.model).__name__}")
    architecture(cfg.model.get("architecture"))
    return cfg
