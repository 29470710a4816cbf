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
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from codefusion.config import CODEFUSION_ONLY
from codefusion.errors import UserError
from codefusion.fields import above, at_least, check_fields, unit
from codefusion.languages import NAMES

log = logging.getLogger(__name__)


class RunConfigError(UserError):
    """A run config file or override is invalid."""


def architecture(name: str | None) -> str:
    """A run config's ``model.architecture`` (None: the default), checked against the
    registry (codefusion/auto.py)."""
    from codefusion.auto import ARCHITECTURES
    from codefusion.generator import DEFAULT_ARCHITECTURE

    name = DEFAULT_ARCHITECTURE if name is None else name
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise RunConfigError(
            f"model.architecture must be one of {', '.join(ARCHITECTURES)}, not {name!r}"
        )
    return name


# The stage keys' ranges (types come from the annotations): codefusion/fields.py checks both
# before anything runs.
STAGE_RANGES = {
    "max_steps": at_least(1),
    "batch_size": at_least(1),
    "lr": above(0),
    "weight_decay": at_least(0),
    "warmup_steps": at_least(0),
    "grad_clip": above(0),
    "pad_weight": at_least(0),
    "uncond_ratio": unit(),
    "mask_rate": unit(),
    "prompt_dropout": unit(),
    "val_fraction": unit(high_inclusive=False),
    "val_every": at_least(1),
    "val_batches": at_least(0),
    "ckpt_every": at_least(1),
    "log_every": at_least(1),
    "ema_decay": (0.0, 1.0, False, False),
    "self_cond_prob": unit(),
    "min_t": unit(high_inclusive=False),
    "val_generate": at_least(0),
    "val_generate_steps": at_least(1),
    "val_generate_draws": at_least(1),
    "num_workers": at_least(0),
}
RUN_RANGES = {"seed": at_least(0), "num_nodes": at_least(1)}
TOKENIZER_RANGES = {"vocab_size": at_least(300)}
TOKENIZER_CHOICES = {"scheme": ("literal", "bytelevel")}


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

    def check(self, where: str) -> None:
        """Every key's type, range and choices (codefusion/fields.py); ``where``: its section."""
        from codefusion.diffusion import DECODER_INPUTS, NOISE_WEIGHTINGS

        choices = {
            "on_nan": ("stop", "skip"),
            "noise_weighting": tuple(NOISE_WEIGHTINGS),
            "decoder_input": DECODER_INPUTS,
            "export": ("last", "best"),
        }
        check_fields(self, where, RunConfigError, STAGE_RANGES, choices)
        if self.export == "best" and self.val_generate < 1:
            raise RunConfigError(
                f"{where}.export: best selects by held-out generation: set {where}.val_generate"
            )

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


def _build(cls, d: dict[str, Any], where: str, prefix: str = ""):
    """``cls`` from a mapping; unknown keys, wrong types, ranges and choices are one-line
    errors naming the key (``prefix``: the section, e.g. ``finetune.``)."""
    if not isinstance(d, dict):
        what = prefix.rstrip(".") or "the config"
        raise RunConfigError(f"{where}: {what} must be a mapping, got {d!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise RunConfigError(f"{where}: unknown keys {', '.join(prefix + k for k in unknown)}")
    kwargs = {}
    for k, v in d.items():
        if k == "tokenizer":
            v = _build(TokenizerConfig, v, where, "tokenizer.")
        elif k in ("pretrain", "finetune") and v is not None:
            v = _build(StageConfig, v, where, f"{k}.")
        kwargs[k] = v
    obj = cls(**kwargs)
    if cls is StageConfig:
        obj.check(prefix.rstrip("."))
    elif cls is TokenizerConfig:
        check_fields(obj, "tokenizer", RunConfigError, TOKENIZER_RANGES, TOKENIZER_CHOICES)
    else:
        check_fields(obj, "", RunConfigError, RUN_RANGES, {"language": NAMES})
    return obj


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise RunConfigError(f"override key {dotted!r} has an empty part")
    for i, k in enumerate(keys[:-1]):
        if d.get(k) is None:
            d[k] = {}
        if not isinstance(d[k], dict):
            where = ".".join(keys[: i + 1])
            raise RunConfigError(f"{where} is {d[k]!r}, not a section: cannot set {dotted}")
        d = d[k]
    d[keys[-1]] = value


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and where (PyYAML's message spans lines)."""
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load_run_config(
    path: str | Path | None, overrides: list[str] = (), twin: str | None = None
) -> RunConfig:
    """Read a YAML run config and apply ``key.sub=value`` overrides (values parsed as YAML).

    ``twin``: the config's twin of another architecture (``--baseline``, ``--masked``): the same
    data, stages, preset and lengths, without the options of CodeFusion's own model (its copy
    head, self-conditioning, ...), which the twin either lacks or would take as a change of
    recipe; an override may still set one."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise RunConfigError(f"config file {p} not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise RunConfigError(f"{p}: invalid YAML ({_yaml_problem(e)})") from None
    if twin is not None:
        model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
        dropped = sorted(k for k in model if k in CODEFUSION_ONLY)
        raw["model"] = {k: v for k, v in model.items() if k not in CODEFUSION_ONLY}
        raw["model"]["architecture"] = twin
        if dropped:
            log.info("the %s twin leaves out CodeFusion's model.%s", twin, ", model.".join(dropped))
    for item in overrides:
        if "=" not in item:
            raise RunConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0]
            raise RunConfigError(f"override {item!r}: not a value ({first})") from None
        _set(raw, key.strip(), parsed)
    cfg = _build(RunConfig, raw, str(path or "config"))
    for lang in cfg.tokenizer.languages:
        if lang not in NAMES:
            raise RunConfigError(f"tokenizer.languages: unknown {lang!r} (choose from {NAMES})")
    check_model_section(cfg.model)
    return cfg


def check_model_section(model: dict[str, Any]) -> None:
    """The model section as the architecture will read it, checked before anything runs (the
    vocabulary size comes from the tokenizer later)."""
    from codefusion.config import ConfigError

    overrides = dict(model)
    arch = architecture(overrides.pop("architecture", None))
    name = overrides.pop("preset", "paper")
    if not isinstance(name, str) or name not in ("paper", "small", "tiny"):
        raise RunConfigError(f"model.preset must be one of paper, small, tiny, got {name!r}")
    overrides.pop("encoder_path", None)
    try:
        if arch == "t5-baseline":
            from codefusion.baseline import baseline_config

            baseline_config(name, **overrides)
        elif arch == "masked":
            from codefusion.masked import masked_preset

            masked_preset(name, **overrides)
        else:
            from codefusion.config import preset

            preset(name, **overrides)
    except ConfigError as e:
        raise RunConfigError(f"model ({arch}): {e}") from None
