"""The user-facing model: ``CodeFusion.from_pretrained(dir).generate(prompts, k=5)``.

A :class:`~codefusion.generator.Generator` whose draw step is the diffusion sampler
(:mod:`codefusion.sampling`) and whose options are :class:`~codefusion.sampling.SamplingOptions`
(``steps``, ``eta``, ``clamp``, ``fast``, ``cache_cross_kv``, ``length``,
``length_candidates``). Its model directory's ``config.json`` is a ``CodeFusionConfig``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from codefusion.config import CodeFusionConfig, preset
from codefusion.errors import GenerationError, ModelLoadError
from codefusion.generator import Candidate, Generator, check_prompts, rank_candidates
from codefusion.model import CodeFusionModel, attention_mask
from codefusion.sampling import LENGTH_MODES, Known, SampleOutput, SamplingOptions, sample
from codefusion.schedule import SqrtSchedule
from codefusion.tokenizer import CodeTokenizer

__all__ = ["Candidate", "CodeFusion", "build_model", "length_known", "rank_candidates"]


def length_known(lengths: torch.Tensor, code_len: int, eos_id: int, pad_id: int) -> Known:
    """Given positions for draws of fixed lengths [N]: ``</s>`` at the length, pad after it."""
    pos = torch.arange(code_len, device=lengths.device)[None]  # [1, C]
    ln = lengths[:, None]
    tokens = torch.where(pos == ln, eos_id, pad_id).long()
    return Known(mask=pos >= ln, tokens=tokens)


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


class CodeFusion(Generator):
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
        self.schedule = SqrtSchedule(cfg.diffusion_steps, cfg.schedule_offset).to(self.device)

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
        if options.length is not None and options.length not in LENGTH_MODES:
            raise GenerationError(
                f"length must be one of {', '.join(LENGTH_MODES)}, not {options.length!r}"
            )
        if options.length == "predicted" and self.model.length_head is None:
            raise GenerationError("length='predicted' needs a model trained with a length head")
        if options.length_candidates < 1:
            raise GenerationError(
                f"length_candidates must be at least 1, got {options.length_candidates}"
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
    ) -> SampleOutput:
        """The draw step: E(s) once per call, the given end positions of
        ``length="predicted"`` (draw ``j`` of a prompt gets the ``(j mod length_candidates)``-th
        most likely length of the length head; the positions from it on are ``</s>`` then pad),
        then the sampler (:func:`codefusion.sampling.sample`)."""
        cfg, dev = self.config, self.device
        length = options.length
        if length is None:
            length = "free" if self.model.length_head is None else "predicted"
        enc = self.model.encode(ids.to(dev), mask.to(dev))  # once per call, not per draw
        known = None
        if length == "predicted":
            lengths = self.draw_lengths(enc, mask.to(dev), num_draws, options.length_candidates)
            known = length_known(lengths, cfg.code_len, cfg.eos_id, cfg.pad_id)
        enc = enc.repeat_interleave(num_draws, dim=0)
        # No mask at all when no prompt position is padding (one prompt, or prompts of one
        # length): SDPA can then take its flash kernel. Decided on the host copy: no sync.
        cross_mask = (
            None
            if bool(mask.all())
            else attention_mask(mask.to(dev)).repeat_interleave(num_draws, dim=0)
        )
        gen = torch.Generator(device=dev).manual_seed(seed)
        return sample(self.model, self.schedule, enc, cross_mask, gen, options, known, trace_at)

    def draw_lengths(
        self, enc: torch.Tensor, mask: torch.Tensor, num_draws: int, candidates: int
    ) -> torch.Tensor:
        """[P * num_draws] code lengths: the length head's top ``candidates`` (1..C-1 tokens,
        most likely first), repeated over each prompt's draws."""
        c = self.config.code_len
        logits = self.model.length_logits(enc, mask)[:, 1:c]  # lengths 1..C-1 leave room for </s>
        top = logits.topk(min(candidates, c - 1), dim=-1).indices + 1  # [P, m]
        pick = torch.arange(num_draws, device=top.device) % top.shape[1]
        return top[:, pick].flatten()
