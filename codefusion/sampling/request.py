"""What a sampling request sets up before its first step and reads after its last, the same for
the plain loop (``loop.py``) and the graph runner (``graph.py``).

A request is ``P`` prompts (E(s) [P, S, De], computed once per prompt by the caller) and
``num_draws`` draws of each: ``N = P x num_draws`` rows of latents, a prompt's draws
consecutive. E(s) and its cross-attention K/V stay at P rows: the draws of a prompt share them
(``model.Attention`` folds them into one query sequence). Both paths draw from the caller's
generator in the same order: x_T [N] (the edit's ε when editing), then guidance's ξ [P], then
each step's z (η > 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from codefusion.diffusion import content_mask
from codefusion.model import KV, CodeFusionModel, Prompt
from codefusion.sampling.ddim import StepPlan
from codefusion.sampling.denoise import Conditioning, DenoiseSpec
from codefusion.sampling.options import SamplingOptions
from codefusion.schedule import SqrtSchedule


@dataclass
class Known:
    """Canvas positions whose tokens are given (infilling).

    At every step x̂0 is replaced at these positions by L(token) before the DDIM update, so
    their x_t follows the forward process of the given token and the final tokens there are
    the given ones. ``no_stop`` marks free positions that must hold a code token: the decode
    step takes the best token other than the end and pad tokens there (an infilling hole of a
    fixed length, which an end token would cut short)."""

    mask: torch.Tensor  # [N, C] bool: True = given
    tokens: torch.Tensor  # [N, C] int64 (read where mask)
    no_stop: torch.Tensor | None = None  # [N, C] bool: no end or pad token here

    def to(self, device: torch.device) -> Known:
        no_stop = None if self.no_stop is None else self.no_stop.to(device)
        return Known(self.mask.to(device), self.tokens.to(device), no_stop)


@dataclass
class SampleOutput:
    tokens: torch.Tensor  # [N, C] argmax ids
    scores: torch.Tensor  # [N] mean log-probability of the chosen tokens (content + end)
    trace: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (t, tokens of x̂0)


@dataclass
class Prepared:
    """A request's first latent, its plan, its :class:`DenoiseSpec` and the tensors of its
    :class:`Conditioning` (but N's K/V, which each path computes from ``enc_n`` itself)."""

    x: torch.Tensor  # [N, C, Dz] the first step's x: x_T, or the edited input's x_t0
    plan: StepPlan
    spec: DenoiseSpec
    enc_n: torch.Tensor  # N's cross-attention source: E(s) [P], or [E(s); ξ] [2P] (guided)
    mask_n: torch.Tensor | None  # its mask (the unconditional half: all ones)
    guidance: torch.Tensor | None  # 0-d w (guided)
    table: torch.Tensor | None  # [V, Dz] (clamp; prediction tokens)
    known_mask: torch.Tensor | None  # [N, C, 1]
    known_x0: torch.Tensor | None  # [N, C, Dz]
    prompt_n: Prompt | None  # what N's pointer reads: [P], or [P; the empty prompt's] (guided)

    def conditioning(self, kv: list[KV]) -> Conditioning:
        return Conditioning(
            kv=kv,
            mask=self.mask_n,
            guidance=self.guidance,
            table=self.table,
            prompt=self.prompt_n,
            known_mask=self.known_mask,
            known_x0=self.known_x0,
        )

    def first_self_condition(self) -> torch.Tensor:
        """The first step's self-conditioning input: zeros, [N] rows ([2N] when guided)."""
        rows = self.x.shape[0] * (2 if self.spec.guided else 1)
        return self.x.new_zeros((rows, *self.x.shape[1:]))


def prepare(
    model: CodeFusionModel,
    schedule: SqrtSchedule,
    enc: torch.Tensor,
    cross_mask: torch.Tensor | None,
    num_draws: int,
    generator: torch.Generator,
    options: SamplingOptions,
    known: Known | None = None,
    start: torch.Tensor | None = None,
    prompt: Prompt | None = None,
) -> Prepared:
    """Everything before the first step, drawn from ``generator`` in a fixed order: x_T (the
    edit's ε when ``start`` is given), then ξ for guidance. ``start``: canvas ids [N, C] of the
    code to edit (``options.strength`` says from which step)."""
    if (start is None) != (options.strength is None):
        raise ValueError("an edit takes both start tokens and a strength, a sample neither")
    cfg = model.config
    shape = (enc.shape[0] * num_draws, cfg.code_len, cfg.latent_dim)
    x = torch.randn(shape, generator=generator, device=enc.device, dtype=enc.dtype)
    plan = StepPlan.for_options(schedule, options)
    if start is not None:
        x0 = model.embed_code(start.to(enc.device)).to(x.dtype)
        # t0 = 0: no step runs and D reads L(code) itself (strength -> 0 returns the input).
        x = x0 if len(plan) == 0 else schedule.q_sample(x0, plan.t[:1].expand(x.shape[0]), x)
    enc_n, mask_n, w, prompt_n = enc, cross_mask, None, prompt
    guided = options.guidance != 1
    if guided:
        xi = torch.randn(enc.shape, generator=generator, device=enc.device, dtype=enc.dtype)
        enc_n = torch.cat([enc, xi])
        if cross_mask is not None:
            mask_n = torch.cat([cross_mask, torch.ones_like(cross_mask)])
        w = torch.tensor(float(options.guidance), device=enc.device)
        if prompt is not None:  # the unconditional half points at the empty prompt's </s>
            only_end = torch.zeros_like(prompt.mask)
            only_end[:, 0] = True
            ends = torch.full_like(prompt.ids, model.config.eos_id)
            prompt_n = Prompt(
                torch.cat([prompt.enc, xi]),
                torch.cat([prompt.mask, only_end]),
                torch.cat([prompt.ids, ends]),
            )
    spec = DenoiseSpec(
        prediction=cfg.prediction,
        self_condition=cfg.self_condition,
        guided=guided,
        clamp=options.clamp,
        known=known is not None,
    )
    tokens = cfg.prediction == "tokens"
    table = model.code_table() if options.clamp or tokens else None
    known_mask = known_x0 = None
    if known is not None:
        known_mask, known_x0 = known.mask.unsqueeze(-1), model.embed_code(known.tokens)
    return Prepared(
        x, plan, spec, enc_n, mask_n, w, table, known_mask, known_x0, prompt_n if tokens else None
    )


@torch.no_grad()
def decode_tokens(
    model: CodeFusionModel,
    x0: torch.Tensor,
    kv_d: list[KV],
    cross_mask: torch.Tensor | None,
    known: Known | None = None,
    prompt: Prompt | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """D and H on x̂0: argmax tokens [N, C] (the given ones where ``known``) and their mean
    log-probability over the content and the first end token [N]. ``prompt``: what a model
    with a pointer copies from."""
    logp = model.token_logprobs(model.decode(x0, kv_d, cross_mask), prompt).float()
    if known is not None and known.no_stop is not None:
        cfg = model.config
        stop = torch.zeros(logp.shape[-1], dtype=torch.bool, device=logp.device)
        stop[[cfg.pad_id, cfg.eos_id]] = True
        tokens = logp.masked_fill(known.no_stop.unsqueeze(-1) & stop, -torch.inf).argmax(-1)
    else:
        tokens = logp.argmax(-1)
    if known is not None:
        tokens = torch.where(known.mask, known.tokens, tokens)
    best = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    content = content_mask(tokens, model.config.pad_id, model.config.eos_id).float()
    return tokens, (best * content).sum(-1) / content.sum(-1)
