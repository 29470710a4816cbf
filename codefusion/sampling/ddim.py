"""The plain sampler: x_T ~ N(0, I) -> DDIM steps over the schedule -> x̂0 -> D and H once -> argmax.

Notation (DDIM, Song et al. 2021, eq. 12; ᾱ is the schedule's ``alphas_cumprod``; t' is the
step after t in the plan, smaller; at the last step the sampler takes x̂0 itself):

    x_t                                        x           the latent at step t    [N, C, Dz]
    x̂0 = N(x_t, t, E(s) [, previous x̂0])     x0          N's estimate of L(y)
    ε̂  = (x_t - √ᾱ_t x̂0) / √(1 - ᾱ_t)         eps         the noise that x̂0 implies
    σ_t = η √((1 - ᾱ_t') / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_t')    sigma
    x_t' = √ᾱ_t' x̂0 + √(1 - ᾱ_t' - σ_t²) ε̂ + σ_t z,   z ~ N(0, I)     x_prev, noise

    StepCoef field   sqrt_ab   sqrt_1m_ab    sqrt_ab_prev   c_eps               sigma
    value            √ᾱ_t      √(1 - ᾱ_t)    √ᾱ_t'          √(1 - ᾱ_t' - σ_t²)  σ_t

η = 0 (``eta``) is deterministic given x_T, so a respaced run of S < T steps is too; η = 1 is
ancestral sampling. A model that predicts ε (``prediction="eps"``) gives x̂0 = (x_t - √(1-ᾱ_t)
ε̂) / √ᾱ_t. Two optional edits of x̂0 come before the update: clamping to the nearest token
embedding (``clamp``), and given tokens (:class:`Known`: L(token) at their positions).

All draws of all prompts run as one batch. The prompt is encoded once by the caller and the
cross-attention keys/values of E's output are computed once per call (``cache_cross_kv``):
every step reuses them. With a self-conditioned N each step reads the previous x̂0 (zeros at
the first). The CUDA-graph runner (``graph.py``) replays this same :func:`ddim_step`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from codefusion.diffusion import content_mask
from codefusion.model import KV, CodeFusionModel, Denoiser
from codefusion.sampling.options import SamplingOptions
from codefusion.schedule import SqrtSchedule


@dataclass
class Known:
    """Canvas positions whose tokens are given (the end of a chosen length, infilling).

    At every step N's estimate x̂0 is replaced at these positions by L(token) before the DDIM
    update, so their x_t follows the forward process of the given token (RePaint-style
    replacement) and the final tokens there are the given ones."""

    mask: torch.Tensor  # [N, C] bool: True = given
    tokens: torch.Tensor  # [N, C] int64 (read where mask)


@dataclass
class SampleOutput:
    tokens: torch.Tensor  # [N, C] argmax ids
    scores: torch.Tensor  # [N] mean log-probability of the chosen tokens (content + end)
    trace: list[tuple[int, torch.Tensor]] = field(
        default_factory=list
    )  # (t, tokens decoded from x̂0)


class StepCoef(NamedTuple):
    """One step's coefficients (see the notation above): 0-d tensors, or columns of a plan."""

    sqrt_ab: torch.Tensor  # √ᾱ_t
    sqrt_1m_ab: torch.Tensor  # √(1 - ᾱ_t)
    sqrt_ab_prev: torch.Tensor  # √ᾱ_t'
    c_eps: torch.Tensor  # √(1 - ᾱ_t' - σ_t²)
    sigma: torch.Tensor  # σ_t

    @classmethod
    def of(cls, row: torch.Tensor) -> StepCoef:
        """The fields of one row of :attr:`StepPlan.coef` ([5] -> five 0-d views)."""
        return cls(*row.unbind(-1))


@dataclass(frozen=True)
class StepPlan:
    """The steps of one sampling run and their coefficients, on the schedule's device.

    ``coef`` holds :class:`StepCoef`'s fields as columns, so that the graph runner copies one
    row per step into its buffer; :meth:`coef_at` names them."""

    ts: list[int]  # descending steps, on the host
    t: torch.Tensor  # [S] int64
    coef: torch.Tensor  # [S, 5] fp32, columns in StepCoef's order

    @classmethod
    def build(cls, schedule: SqrtSchedule, ts: list[int], eta: float) -> StepPlan:
        """The coefficients of the descending steps ``ts``, elementwise. The last step has no
        successor; its row uses ᾱ_t' = ᾱ_t (σ = 0), a finite placeholder: the sampler takes
        that step's x̂0."""
        ab = schedule.alphas_cumprod
        t = torch.tensor(ts, dtype=torch.long, device=ab.device)
        prev = torch.tensor(ts[1:] + ts[-1:], dtype=torch.long, device=ab.device)
        a_t, a_prev = ab[t], ab[prev]
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()
        coef = StepCoef(
            sqrt_ab=schedule.sqrt_ab[t],
            sqrt_1m_ab=schedule.sqrt_1m_ab[t],
            sqrt_ab_prev=a_prev.sqrt(),
            c_eps=(1 - a_prev - sigma**2).clamp_min(0).sqrt(),
            sigma=sigma,
        )
        return cls(list(ts), t, torch.stack(coef, dim=1))

    @classmethod
    def for_options(cls, schedule: SqrtSchedule, options: SamplingOptions) -> StepPlan:
        """The plan ``options`` ask for: ``steps`` respaced steps (all T for None)."""
        return cls.build(schedule, schedule.timesteps(options.steps), options.eta)

    def __len__(self) -> int:
        return len(self.ts)

    def coef_at(self, i: int) -> StepCoef:
        return StepCoef.of(self.coef[i])


def nearest_embedding(x0: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Clamp each position to the closest token embedding (Diffusion-LM's clamping trick).

    L's outputs all have the same norm, so the nearest one is the one with the largest dot product.
    """
    return table[(x0 @ table.T).argmax(-1)]


def known_inputs(
    model: CodeFusionModel, known: Known | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``Known`` as :func:`ddim_step`'s inputs: mask [N, C, 1] and L(tokens) [N, C, Dz]."""
    if known is None:
        return None, None
    return known.mask.unsqueeze(-1), model.embed_code(known.tokens)


def ddim_step(
    model: CodeFusionModel,
    x: torch.Tensor,  # [N, C, Dz] x_t
    t: torch.Tensor,  # [N] int64
    c: StepCoef,
    kv: list[KV],  # N's cross-attention keys/values
    cross_mask: torch.Tensor | None,  # [N, 1, 1, S]
    table: torch.Tensor | None = None,  # [V, Dz]: clamp x̂0 to the nearest token embedding
    noise: torch.Tensor | None = None,  # [N, C, Dz] z: eta > 0
    x0_prev: torch.Tensor | None = None,  # [N, C, Dz]: self-conditioning input
    known_mask: torch.Tensor | None = None,  # [N, C, 1] bool: positions with given tokens
    known_x0: torch.Tensor | None = None,  # [N, C, Dz]: L(given tokens)
    denoiser: Denoiser | None = None,  # N to run (the graph runner's bf16 copy); model's N if None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> (x_t', x̂0), every per-step number a tensor so that a single CUDA
    graph captured from it serves every step. Replacing x̂0 by L(token) at given positions puts
    their x_t' on the forward-process path of that token. The update is computed in ``x``'s
    dtype whatever N's."""
    net = model.denoise if denoiser is None else denoiser
    out = net(x, t, kv, cross_mask, x0_prev).to(x.dtype)
    x0 = out if model.config.prediction == "x0" else (x - c.sqrt_1m_ab * out) / c.sqrt_ab
    if table is not None:
        x0 = nearest_embedding(x0, table)
    if known_mask is not None:
        x0 = torch.where(known_mask, known_x0.to(x0.dtype), x0)
    eps = (x - c.sqrt_ab * x0) / c.sqrt_1m_ab
    x_prev = c.sqrt_ab_prev * x0 + c.c_eps * eps
    if noise is not None:
        x_prev = x_prev + c.sigma * noise
    return x_prev, x0


@torch.no_grad()
def decode_tokens(
    model: CodeFusionModel,
    x0: torch.Tensor,
    kv_d: list[KV],
    cross_mask: torch.Tensor | None,
    known: Known | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """D and H on x̂0: argmax tokens [N, C] (the given ones where ``known``) and their mean
    log-probability over the content and the first end token [N]."""
    logp = F.log_softmax(model.logits(model.decode(x0, kv_d, cross_mask)).float(), dim=-1)
    tokens = logp.argmax(-1)
    if known is not None:
        tokens = torch.where(known.mask, known.tokens, tokens)
    best = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    content = content_mask(tokens, model.config.pad_id, model.config.eos_id).float()
    return tokens, (best * content).sum(-1) / content.sum(-1)


def initial_noise(
    model: CodeFusionModel, enc: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """x_T ~ N(0, I) [N, C, Dz]: the first draw of every sampling run, plain or graph."""
    cfg = model.config
    shape = (enc.shape[0], cfg.code_len, cfg.latent_dim)
    return torch.randn(shape, generator=generator, device=enc.device, dtype=enc.dtype)


@torch.no_grad()
def sample(
    model: CodeFusionModel,
    schedule: SqrtSchedule,
    enc: torch.Tensor,  # [N, S, De] E(s), already repeated per draw
    cross_mask: torch.Tensor | None,  # [N, 1, 1, S]
    generator: torch.Generator,
    options: SamplingOptions | None = None,
    known: Known | None = None,
    trace_at: set[int] | None = None,
) -> SampleOutput:
    """Denoise one batch of draws as ``options`` say (default ``SamplingOptions()``):
    ``known`` are given tokens (fixed end positions, infilling), ``trace_at`` the steps at which
    x̂0 is decoded too (``SampleOutput.trace``).

    This is the plain loop, one :func:`ddim_step` per step of the plan, then D and H once; with
    ``options.fast`` (default: on CUDA) on CUDA tensors and cached K/V, the graph runner
    (``graph.py``) replays the same step from the same x_T and noise instead."""
    options = SamplingOptions() if options is None else options
    fast = enc.is_cuda if options.fast is None else options.fast
    if fast and enc.is_cuda and options.cache_cross_kv:
        from codefusion.sampling.graph import sample_graph

        return sample_graph(model, schedule, enc, cross_mask, generator, options, known, trace_at)
    cfg = model.config
    n = enc.shape[0]
    x = initial_noise(model, enc, generator)
    cached = options.cache_cross_kv
    kv_n, kv_d = model.cross_kv(enc) if cached else (None, None)
    table = None
    if options.clamp:
        table = model.embed_code(torch.arange(cfg.vocab_size, device=enc.device))
    known_mask, known_x0 = known_inputs(model, known)
    plan = StepPlan.for_options(schedule, options)
    trace: list[tuple[int, torch.Tensor]] = []
    x0 = torch.zeros_like(x) if cfg.self_condition else None  # self-conditioning input
    for i, t in enumerate(plan.ts):
        last = i == len(plan) - 1
        kv = kv_n if cached else model.denoiser.cross_kv(enc)
        noise = None
        if options.eta > 0 and not last:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_prev, x0 = ddim_step(
            model,
            x,
            plan.t[i].expand(n),
            plan.coef_at(i),
            kv,
            cross_mask,
            table,
            noise,
            x0_prev=x0 if cfg.self_condition else None,
            known_mask=known_mask,
            known_x0=known_x0,
        )
        if trace_at is not None and t in trace_at:
            kv_dec = kv_d or model.decoder.cross_kv(enc)
            trace.append((t, decode_tokens(model, x0, kv_dec, cross_mask, known)[0]))
        x = x0 if last else x_prev
    kv_dec = kv_d or model.decoder.cross_kv(enc)
    tokens, scores = decode_tokens(model, x, kv_dec, cross_mask, known)
    return SampleOutput(tokens, scores, trace)
