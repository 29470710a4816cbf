"""The user-facing model: ``CodeFusion.from_pretrained(dir).generate(prompts, k=5)``.

A :class:`~codefusion.generator.Generator` whose draw step is the diffusion sampler
(:mod:`codefusion.sampling`) and whose options are :class:`~codefusion.sampling.SamplingOptions`
(``steps``, ``eta``, ``clamp``, ``guidance``, ``fast``, ``cache_cross_kv``). Its model directory's
``config.json`` is a ``CodeFusionConfig``.

Beyond generation, the same model and sampler serve two requests an autoregressive model
cannot without retraining:

- :meth:`CodeFusion.infill`: a template with holes (``<fill>``, ``<fill:N>``; see
  :mod:`codefusion.infill`) and a prompt -> the holes filled, every given token kept;
- :meth:`CodeFusion.edit`: code and a prompt -> revised code (SDEdit: the code's embedding
  noised to ``strength`` and denoised under the prompt).

Both take the sampling options too (``guidance`` included), and rank draws as ``generate``
does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from codefusion.config import CodeFusionConfig, preset
from codefusion.errors import GenerationError, ModelLoadError
from codefusion.generator import Candidate, Generator, check_prompts, rank_candidates
from codefusion.infill import InfillCandidate, Infilling
from codefusion.model import CodeFusionModel, Prompt, attention_mask
from codefusion.sampling import Known, SampleOutput, SamplingOptions, sample
from codefusion.schedule import SqrtSchedule
from codefusion.tokenizer import CodeTokenizer

__all__ = [
    "Candidate",
    "CodeFusion",
    "InfillCandidate",
    "build_model",
    "rank_candidates",
]


def build_model(
    cfg: CodeFusionConfig, tokenizer: CodeTokenizer, encoder_path: str | Path | None = None
) -> CodeFusionModel:
    """A fresh model for a tokenizer; E from a local T5-family checkpoint if one is given."""
    cfg.vocab_size, cfg.pad_id, cfg.eos_id = len(tokenizer), tokenizer.pad_id, tokenizer.eos_id
    encoder = None
    if encoder_path is not None:
        from transformers import T5EncoderModel

        try:
            encoder = T5EncoderModel.from_pretrained(str(encoder_path), local_files_only=True)
        except Exception as e:
            raise ModelLoadError(f"{encoder_path}: cannot load a T5 encoder ({e})") from None
        if encoder.get_input_embeddings().num_embeddings != len(tokenizer):
            encoder.resize_token_embeddings(len(tokenizer))
        cfg.encoder = encoder.config.to_dict()
    return CodeFusionModel(cfg, encoder)


class CodeFusion(Infilling, Generator):
    """A trained CodeFusion model with its tokenizer and schedule, ready to generate.

    ``generate`` draws ``num_draws`` (default ``2k``) noise samples per prompt in one batch and
    ranks them by the model's own mean token log-probability. ``steps`` None uses all T
    diffusion steps; fewer are respaced (DDIM). ``fast`` (default: True on CUDA, False on CPU):
    the CUDA-graph bf16 sampler, from the same noise as the plain loop (bf16 rounding can still
    change a close token choice)."""

    architecture = "codefusion"
    Options = SamplingOptions

    def __init__(self, model: CodeFusionModel, tokenizer: CodeTokenizer) -> None:
        super().__init__(model, tokenizer)
        cfg = model.config
        self.schedule = SqrtSchedule(cfg.diffusion_steps).to(self.device)

    @classmethod
    def from_preset(
        cls,
        name: str,
        tokenizer: CodeTokenizer,
        encoder_path: str | Path | None = None,
        **overrides: Any,
    ) -> CodeFusion:
        """A randomly initialised model of a preset (``paper``, ``small``, ``tiny``)."""
        return cls(build_model(preset(name, **overrides), tokenizer, encoder_path), tokenizer)

    def to(self, device: str | torch.device) -> CodeFusion:
        self.model.to(device)
        self.schedule.to(device)
        return self

    # --- config.json --------------------------------------------------------------------------
    @classmethod
    def config_from_dict(cls, d: dict[str, Any]) -> CodeFusionConfig:
        return CodeFusionConfig.from_dict(d)

    def config_to_dict(self) -> dict[str, Any]:
        return self.config.to_dict()  # no "architecture": the default one

    @classmethod
    def model_from_config(cls, config: CodeFusionConfig) -> CodeFusionModel:
        return CodeFusionModel(config)

    # --- generation --------------------------------------------------------------------------
    def check_options(self, options: SamplingOptions) -> None:
        t = self.config.diffusion_steps
        if options.steps is not None and not 1 <= options.steps <= t:
            raise GenerationError(f"steps must be between 1 and {t}, got {options.steps}")
        for name, lo, hi, closed in (("eta", 0, 1, True), ("strength", 0, 1, False)):
            v = getattr(options, name)
            if v is None and name == "strength":
                continue
            ok = isinstance(v, int | float) and not isinstance(v, bool)
            if not ok or not (lo <= v <= hi if closed else lo < v <= hi):
                where = f"[{lo}, {hi}]" if closed else f"({lo}, {hi}]"
                raise GenerationError(f"{name} must lie in {where}, got {v!r}")
        w = options.guidance
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
            raise GenerationError(f"guidance must be a finite number, got {w!r}")
        if w != 1 and self.trained and not self.trained.get("prompt_dropout"):
            warnings.warn(
                "guidance needs a model fine-tuned with prompt_dropout > 0; this one was not, "
                "so its unconditional estimate is pre-training's",
                stacklevel=4,
            )

    @torch.no_grad()
    def sample_draws(
        self,
        prompts: Sequence[str],
        num_draws: int,
        seed: int = 0,
        allow_empty: bool = False,
        trace_at: set[int] | None = None,
        **options: Any,
    ) -> SampleOutput:
        """Raw draws for each prompt, ``num_draws`` consecutive rows per prompt, unranked;
        ``trace_at``: the steps at which x̂0 is decoded as well (``SampleOutput.trace``).
        ``options`` as for ``generate`` (:class:`~codefusion.sampling.SamplingOptions`)."""
        opts = self.options(**options)
        ids, mask = self.encode_prompts(check_prompts(prompts, allow_empty))
        return self.draw(ids, mask, num_draws, seed, opts, trace_at)

    @torch.no_grad()
    def draw(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        num_draws: int,
        seed: int,
        options: SamplingOptions,
        trace_at: set[int] | None = None,
        known: Known | None = None,
        start: torch.Tensor | None = None,
    ) -> SampleOutput:
        """The draw step: E(s) once per prompt (its draws share it and its K/V), then the
        sampler (:func:`codefusion.sampling.sample`). ``known``: given positions of every draw
        ([P * num_draws, C]: infilling); ``start``: canvas ids [P, C] of code to edit
        (``options.strength``)."""
        dev = self.device
        if (start is None) != (options.strength is None):
            raise GenerationError(
                "strength is the option of an edit: use edit(code, prompt, strength=...)"
            )
        enc = self.model.encode(ids.to(dev), mask.to(dev))
        if known is not None:
            known = known.to(dev)
        if start is not None:
            start = start.to(dev).repeat_interleave(num_draws, dim=0)
        # No mask at all when no prompt position is padding (one prompt, or prompts of one
        # length): SDPA can then take its flash kernel. Decided on the host copy: no sync.
        cross_mask = None if bool(mask.all()) else attention_mask(mask.to(dev))
        gen = torch.Generator(device=dev).manual_seed(seed)
        prompt = Prompt(enc, mask.to(dev).bool(), ids.to(dev)) if self.model.copy else None
        return sample(
            self.model, self.schedule, enc, cross_mask, num_draws, gen, options, known, trace_at,
            start, prompt,
        )  # fmt: skip

    # --- editing -----------------------------------------------------------------------------
    def encode_edit_inputs(self, codes: Sequence[str]) -> torch.Tensor:
        """Canvas ids [P, C] of the code to edit; a ``GenerationError`` for code that is not
        text, is empty, or is longer than the canvas."""
        c = self.config.code_len
        for i, code in enumerate(codes):
            if not isinstance(code, str):
                raise GenerationError(f"code {i} is a {type(code).__name__}, not text")
            if not code.strip():
                raise GenerationError(f"code {i} is empty: there is nothing to edit")
        ids, truncated = self.tokenizer.encode_code(codes, c)
        for i, cut in enumerate(truncated):
            if cut:
                n = len(self.tokenizer.ids(codes[i])) + 1
                raise GenerationError(
                    f"code {i} is {n} tokens with its end token, longer than the model's "
                    f"canvas of {c}"
                )
        return ids

    @torch.no_grad()
    def edit_draws(
        self,
        codes: str | Sequence[str],
        prompts: str | Sequence[str],
        num_draws: int,
        strength: float,
        seed: int = 0,
        trace_at: set[int] | None = None,
        allow_empty: bool = False,
        **options: Any,
    ) -> SampleOutput:
        """Raw edit draws, ``num_draws`` consecutive rows per (code, prompt), unranked."""
        codes = [codes] if isinstance(codes, str) else list(codes)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(codes) != len(prompts):
            raise GenerationError(f"{len(codes)} programs to edit but {len(prompts)} prompts")
        opts = self.options(strength=strength, **options)
        start = self.encode_edit_inputs(codes)
        ids, mask = self.encode_prompts(check_prompts(prompts, allow_empty))
        return self.draw(ids, mask, num_draws, seed, opts, trace_at, start=start)

    def edit(
        self,
        code: str | Sequence[str],
        prompt: str | Sequence[str],
        strength: float = 0.3,
        k: int = 5,
        num_draws: int | None = None,
        seed: int = 0,
        syntax_rank: str | None = None,
        allow_empty: bool = False,
        rank: str = "score",
        **options: Any,
    ) -> list[Candidate] | list[list[Candidate]]:
        """Revise ``code`` under ``prompt`` (SDEdit): L(code) noised to step
        t0 = round(strength (T - 1)), then denoised by the respaced steps at or below t0 and
        ranked as ``generate`` ranks. ``strength`` in (0, 1] trades faithfulness (small: the
        input comes back; t0 = 0 returns D+H of L(code)) for change (1: a fresh sample).
        One code and prompt return one list; lists of equal length, a list of lists."""
        single = isinstance(code, str)
        if k < 1:
            raise GenerationError(f"k must be at least 1, got {k}")
        n = 2 * k if num_draws is None else num_draws
        if n < k:
            raise GenerationError(f"k={k} is larger than the number of draws ({n})")
        out = self.edit_draws(code, prompt, n, strength, seed, allow_empty=allow_empty, **options)
        codes = [self.tokenizer.decode(r) for r in out.tokens.tolist()]
        scores = out.scores.tolist()
        results = [
            rank_candidates(
                codes[i * n : (i + 1) * n], scores[i * n : (i + 1) * n], k, syntax_rank, rank
            )
            for i in range(len(codes) // n)
        ]
        return results[0] if single else results
