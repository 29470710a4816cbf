"""Masked diffusion in CodeFusion's harness: the same E, the same N and D stacks, tokens
instead of embeddings (codefusion/absorbing.py holds the process, the loss and the sampler).

    E  encoder   T5 encoder over the prompt (CodeFusion's)                  [B, S] -> [B, S, De]
    L  embedding canvas tokens, [MASK] among them                           [B, C] -> [B, C, Dz]
    N  stack     CodeFusion's denoiser layers, cross-attention to E; no timestep input (MDLM
                 finds it unneeded: the share of masked positions tells the time)
    D  stack     CodeFusion's decoder layers, same pattern
    H  head      linear to the vocabulary                               [B, C, Dz] -> [B, C, V]

So the widths and layer counts are CodeFusion's (``config.json``: ``"architecture":
"masked"``, its sizes those of a CodeFusion preset), and the model differs only where the
process does: no timestep MLP or adaLN modulation, a token embedding where CodeFusion embeds
x_t. :class:`MaskedDiffusion` is its :class:`~codefusion.generator.Generator`: ``k`` draws per
prompt unmasked by :func:`~codefusion.absorbing.unmask`, ranked by their mean token
log-probability (each token's at the step it was unmasked, the end token included);
``infill`` keeps the template's tokens (they are never masked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from codefusion.absorbing import unmask
from codefusion.config import SIZE_RANGES, StackSizes, preset_sizes
from codefusion.decoding import UnmaskingOptions
from codefusion.errors import GenerationError
from codefusion.fields import at_least
from codefusion.generator import Generator, check_prompts
from codefusion.infill import Infilling
from codefusion.model import CopyHead, Prompt, Stack, attention_mask, encoder_config
from codefusion.sampling.request import Known, SampleOutput
from codefusion.tokenizer import CodeTokenizer, up_to_first_stop

ARCHITECTURE = "masked"


@dataclass
class MaskedConfig(StackSizes):
    """CodeFusion's stack sizes (codefusion/config.py: the same presets) and the [MASK] id."""

    mask_id: int = 3
    # CodeFusion's pointer over the prompt's tokens (model.CopyHead), mixed into H's
    # distribution: a literal of the prompt is one pointer away, whatever H has learnt of it.
    copy: bool = False

    def __post_init__(self) -> None:
        self.check_sizes(SIZE_RANGES | {"mask_id": at_least(0)})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaskedConfig:
        return cls.from_known(d, "masked model config")


def masked_preset(name: str, **overrides: Any) -> MaskedConfig:
    """The masked model of the sizes of CodeFusion's preset ``name``, with overrides."""
    return MaskedConfig.from_dict(preset_sizes(name) | overrides)


class MaskedModel(nn.Module):
    """E, L, N, D and H of the masked model (see the module doc)."""

    def __init__(self, cfg: MaskedConfig) -> None:
        super().__init__()
        self.config = cfg
        from transformers import T5EncoderModel

        self.encoder = T5EncoderModel(encoder_config(cfg))  # E
        kv_dim = self.encoder.config.d_model
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.latent_dim)  # L
        nn.init.normal_(self.embedding.weight, std=cfg.latent_dim**-0.5)
        z = cfg.latent_dim
        self.denoiser = Stack(cfg, kv_dim, cfg.denoiser_layers, conditioned=False, in_dim=z)  # N
        self.decoder = Stack(cfg, kv_dim, cfg.decoder_layers, conditioned=False, in_dim=z)  # D
        self.head = nn.Linear(z, cfg.vocab_size)  # H
        self.copy = CopyHead(z, kv_dim) if cfg.copy else None  # H's pointer into the prompt

    @property
    def encoder_dim(self) -> int:
        return self.encoder.config.d_model

    def encode(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=prompt_ids, attention_mask=prompt_mask).last_hidden_state

    def cross_kv(self, enc: torch.Tensor):
        """Cross-attention K/V of E's output for N and D: once per prompt."""
        return self.denoiser.cross_kv(enc), self.decoder.cross_kv(enc)

    def logits_from(
        self, z: torch.Tensor, kv, cross_mask: torch.Tensor | None, prompt: Prompt | None = None
    ) -> torch.Tensor:
        """The network on canvas ``z`` [B, C] given the prompt's K/V: logits [B, C, V] (with the
        copy head: normalised log-probabilities, which the loss and the sampler read alike).
        ``z`` may hold several draws per prompt (consecutive rows; see model.Attention)."""
        kv_n, kv_d = kv
        h = self.denoiser.run(self.embedding(z), kv_n, cross_mask)
        h = self.decoder.run(h, kv_d, cross_mask)
        logits = self.head(h)
        if self.copy is None:
            return logits
        if prompt is None:
            raise ValueError("a masked model with a copy head needs the prompt's tokens")
        logits = logits.float()
        logits[..., self.config.mask_id] = float("-inf")  # as the loss and the sampler do
        return self.copy.mix(torch.log_softmax(logits, -1), h, prompt)

    def forward(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """Training: logits [B, C, V] of canvas ``z`` under each row's prompt."""
        enc = self.encode(prompt_ids, prompt_mask)
        prompt = Prompt(enc, prompt_mask.bool(), prompt_ids)
        return self.logits_from(z, self.cross_kv(enc), attention_mask(prompt_mask), prompt)

    def parameter_counts(self) -> dict[str, int]:
        parts = {
            "encoder E": self.encoder,
            "embedding L": self.embedding,
            "denoiser N": self.denoiser,
            "decoder D": self.decoder,
            "head H": self.head,
        }
        if self.copy is not None:
            parts["copy head"] = self.copy
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        counts["total"] = sum(counts.values())
        return counts


class MaskedDiffusion(Infilling, Generator):
    """A trained masked diffusion model with its tokenizer, ready to generate."""

    architecture = ARCHITECTURE
    Options = UnmaskingOptions

    @classmethod
    def from_preset(cls, name: str, tokenizer: CodeTokenizer, **overrides: Any) -> MaskedDiffusion:
        """A randomly initialised model of the sizes of CodeFusion's preset ``name``."""
        ids = dict(
            vocab_size=len(tokenizer),
            pad_id=tokenizer.pad_id,
            eos_id=tokenizer.eos_id,
            mask_id=tokenizer.mask_id,
        )
        return cls(MaskedModel(masked_preset(name, **{**overrides, **ids})), tokenizer)

    @classmethod
    def check_fits(cls, config: MaskedConfig, tokenizer: CodeTokenizer) -> None:
        super().check_fits(config, tokenizer)
        for key, want in (
            ("pad_id", tokenizer.pad_id),
            ("eos_id", tokenizer.eos_id),
            ("mask_id", tokenizer.mask_id),
        ):
            if getattr(config, key) != want:
                from codefusion.errors import ModelLoadError

                raise ModelLoadError(
                    f"config {key} {getattr(config, key)} does not match the tokenizer's {want}"
                )

    # --- config.json --------------------------------------------------------------------------
    @classmethod
    def config_from_dict(cls, d: dict[str, Any]) -> MaskedConfig:
        return MaskedConfig.from_dict(d)

    def config_to_dict(self) -> dict[str, Any]:
        return {"architecture": ARCHITECTURE, **self.config.to_dict()}

    @classmethod
    def model_from_config(cls, config: MaskedConfig) -> MaskedModel:
        return MaskedModel(config)

    # --- generation --------------------------------------------------------------------------
    def check_options(self, options: UnmaskingOptions) -> None:
        s = options.steps
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 1):
            raise GenerationError(f"steps must be at least 1, got {s!r}")

    def num_steps(self, options: UnmaskingOptions) -> int:
        """Unmasking steps of a request: ``steps``, at most one per canvas position (more change
        nothing: the extra steps would unmask nobody), default one per position."""
        c = self.config.code_len
        return c if options.steps is None else min(options.steps, c)

    def draw(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        num_draws: int,
        seed: int,
        options: UnmaskingOptions,
        trace_at: set[int] | None = None,
        known: Known | None = None,
    ) -> SampleOutput:
        """``num_draws`` unmasked canvases per prompt (consecutive rows) and their scores."""
        dev, cfg = self.device, self.config
        enc = self.model.encode(ids.to(dev), mask.to(dev))
        kv = self.model.cross_kv(enc)
        cross_mask = None if bool(mask.all()) else attention_mask(mask.to(dev))
        prompt = Prompt(enc, mask.to(dev).bool(), ids.to(dev))
        rows = ids.shape[0] * num_draws
        z = torch.full((rows, cfg.code_len), cfg.mask_id, dtype=torch.long, device=dev)
        banned = None
        if known is not None:
            known = known.to(dev)
            z = torch.where(known.mask, known.tokens, z)
            if known.no_stop is not None:  # a fixed-length hole holds code tokens
                stops = torch.zeros(cfg.vocab_size, dtype=torch.bool, device=dev)
                stops[[cfg.eos_id, cfg.pad_id]] = True
                banned = known.no_stop[..., None] & stops
        gen = torch.Generator(device=dev).manual_seed(seed)
        steps = self.num_steps(options)
        with torch.no_grad():
            tokens, logp, trace, _ = unmask(
                lambda x: self.model.logits_from(x, kv, cross_mask, prompt), z, cfg.mask_id, steps, gen,
                options.order, banned, trace_at,
            )  # fmt: skip
        content = up_to_first_stop(tokens, (cfg.eos_id, cfg.pad_id))
        if known is not None:
            content = content & ~known.mask
        scores = (logp * content).sum(1) / content.sum(1).clamp(min=1)
        return SampleOutput(tokens, scores, trace)

    @torch.no_grad()
    def sample_draws(self, prompts, num_draws: int, seed: int = 0, trace_at=None, **options):
        """Raw draws for each prompt, unranked; ``trace_at``: the steps whose canvas is kept."""
        opts = self.options(**options)
        ids, mask = self.encode_prompts(check_prompts(prompts, False))
        return self.draw(ids, mask, num_draws, seed, opts, trace_at)

    def steps_of(self, options: dict[str, Any]) -> list[int]:
        """The unmasking steps of a request (for --show-steps)."""
        return list(range(1, self.num_steps(self.options(**options)) + 1))

    def render(self, row: list[int]) -> str:
        """A canvas with its masked positions shown as ``_`` (end and pad tokens dropped)."""
        out, run = [], []
        for i in row + [self.config.mask_id]:
            if i == self.config.mask_id:
                if run:
                    out.append(self.tokenizer.hf.decode(run, skip_special_tokens=True))
                    run = []
                out.append("_")
            else:
                run.append(i)
        return "".join(out[:-1])


__all__ = ["ARCHITECTURE", "MaskedConfig", "MaskedDiffusion", "MaskedModel"]
