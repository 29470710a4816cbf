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
ε̂) / √ᾱ_t. Three optional edits of x̂0 come before the update, in this order: classifier-free
guidance, clamping to the nearest token embedding (``clamp``), and given tokens (:class:`Known`:
L(token) at their positions).

Given tokens (infilling, a fixed end). Replacing x̂0 by L(tok) at a given position before the
update keeps that position on the forward process of tok. With x_t = √ᾱ_t L(tok) + √(1-ᾱ_t) ε
(true at the first step for the ε that x_T defines), ε̂ = (x_t - √ᾱ_t L(tok)) / √(1-ᾱ_t) = ε
exactly, so with η = 0 x_t' = √ᾱ_t' L(tok) + √(1-ᾱ_t') ε: the *same* ε at every step, i.e.
x_t = q_sample(L(tok), t, ε) along the whole (respaced) trajectory, with no fresh noise needed.
With η > 0, x_t' = √ᾱ_t' L(tok) + c_eps ε + σ_t z and c_eps² + σ_t² = 1 - ᾱ_t': still a draw of
q(x_t' | L(tok)), now with partly fresh noise: RePaint's replacement, where the known region is
re-noised from the forward process at each step. The free positions see, through N's
attention, the given ones at exactly the noise level N was trained on. D and H then read the
final x̂0 (L(tok) there) and the decode step forces the given ids (:func:`decode_tokens`).

Classifier-free guidance (``guidance`` w ≠ 1). N runs once on 2N rows: the N conditional rows
read E(s), the N unconditional rows read ξ ~ N(0, I) of E(s)'s shape with no mask (the
unconditional rows of training: pre-training's, and fine-tuning's ``prompt_dropout``), and

    x̂0 = x̂0_u + w (x̂0_c - x̂0_u)       (x̂0_c, x̂0_u: the two halves' estimates; in x0 space)

w = 1 is conditional sampling and runs no unconditional half; w = 0 is unconditional. Both
halves' cross-attention K/V are computed once per call. Self-conditioning
(``guidance_self_condition``): "own" (default) feeds each half its own previous estimate, as in
training, where N only ever read its own prediction; "guided" feeds both halves the guided x̂0.

Editing (SDEdit, ``strength`` s ∈ (0, 1]): the run starts at t0 = round(s (T - 1)) from
x_t0 = √ᾱ_t0 L(code) + √(1-ᾱ_t0) ε (ε: the draw that would have been x_T) and takes the steps
[t0] + those of the respaced plan below t0. t0 = 0 runs no step at all: D and H read L(code)
itself, so s → 0 returns the input wherever D+H round L(code) back to it (``decoder_clean_acc``).

All draws of all prompts run as one batch. The prompt is encoded once by the caller and the
cross-attention keys/values of E's output are computed once per call (``cache_cross_kv``):
every step reuses them. With a self-conditioned N each step reads the previous x̂0 (zeros at
the first). The CUDA-graph runner (``graph.py``) replays this same :func:`ddim_step`, from the
same :func:`prepare` (x_T or the edited input's x_t0, the unconditional half): both consume
the caller's generator in the same order (x_T, then ξ, then each step's z).
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
    replacement, see the notation above) and the final tokens there are the given ones.
    ``no_stop`` marks free positions that must hold a code token: the decode step takes the
    best token other than the end and pad tokens there (an infilling hole of a fixed length,
    which an end token would cut short)."""

    mask: torch.Tensor  # [N, C] bool: True = given
    tokens: torch.Tensor  # [N, C] int64 (read where mask)
    no_stop: torch.Tensor | None = None  # [N, C] bool: no end or pad token here


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
        """The plan ``options`` ask for: ``steps`` respaced steps (all T for None); with a
        ``strength`` (editing), t0 = :func:`start_step` and the respaced steps below it, or no
        step at all for t0 = 0."""
        ts = schedule.timesteps(options.steps)
        if options.strength is not None:
            t0 = start_step(schedule.steps, options.strength)
            ts = [t0] + [t for t in ts if t < t0] if t0 > 0 else []
        return cls.build(schedule, ts, options.eta)

    def __len__(self) -> int:
        return len(self.ts)

    def coef_at(self, i: int) -> StepCoef:
        return StepCoef.of(self.coef[i])


def start_step(diffusion_steps: int, strength: float) -> int:
    """SDEdit's start step t0 = round(strength (T - 1)) for a strength in (0, 1]."""
    return round(strength * (diffusion_steps - 1))


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


GUIDED_SELF_CONDITION = ("own", "guided")


class StepOut(NamedTuple):
    """What one :func:`ddim_step` returns."""

    x_prev: torch.Tensor  # [N, C, Dz] x_t'
    x0: torch.Tensor  # [N, C, Dz] x̂0 after guidance, clamping and given tokens
    # The next step's self-conditioning input: x0, or with guidance "own" each half's own
    # estimate (clamped and with the given tokens, as unguided sampling would feed it) [2N].
    x0_self: torch.Tensor


def ddim_step(
    model: CodeFusionModel,
    x: torch.Tensor,  # [N, C, Dz] x_t
    t: torch.Tensor,  # [N] int64
    c: StepCoef,
    kv: list[KV],  # N's cross-attention keys/values ([2N] rows with guidance)
    cross_mask: torch.Tensor | None,  # [N, 1, 1, S] ([2N] with guidance)
    table: torch.Tensor | None = None,  # [V, Dz]: clamp x̂0 to the nearest token embedding
    noise: torch.Tensor | None = None,  # [N, C, Dz] z: eta > 0
    x0_prev: torch.Tensor | None = None,  # [N, C, Dz] ([2N]: guidance "own"): self-conditioning
    known_mask: torch.Tensor | None = None,  # [N, C, 1] bool: positions with given tokens
    known_x0: torch.Tensor | None = None,  # [N, C, Dz]: L(given tokens)
    denoiser: Denoiser | None = None,  # N to run (the graph runner's bf16 copy); model's N if None
    guidance: torch.Tensor | None = None,  # 0-d w: N on [x; x] against [E(s); ξ], combined
    guided_self: str = "own",  # guidance: what self-conditioning reads (GUIDED_SELF_CONDITION)
) -> StepOut:
    """One DDIM step x_t -> (x_t', x̂0, next self-conditioning input), every per-step number a
    tensor so that a single CUDA graph captured from it serves every step. With ``guidance`` N
    runs once on 2N rows (conditional first) and x̂0 = x̂0_u + w (x̂0_c - x̂0_u). Replacing x̂0
    by L(token) at given positions puts their x_t' on the forward-process path of that token.
    The update is computed in ``x``'s dtype whatever N's."""
    net = model.denoise if denoiser is None else denoiser

    def estimate(x_in: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        out = net(x_in, t if x_in.shape[0] == t.shape[0] else t.repeat(2), kv, cross_mask, prev)
        out = out.to(x.dtype)
        return out if model.config.prediction == "x0" else (x_in - c.sqrt_1m_ab * out) / c.sqrt_ab

    def edit(x0: torch.Tensor) -> torch.Tensor:  # [N] rows: clamping, then given tokens
        if table is not None:
            x0 = nearest_embedding(x0, table)
        if known_mask is not None:
            x0 = torch.where(known_mask, known_x0.to(x0.dtype), x0)
        return x0

    if guidance is None:
        x0 = edit(estimate(x, x0_prev))
        x0_self = x0
    else:
        prev = x0_prev
        if prev is not None and guided_self == "guided":
            prev = prev.repeat(2, 1, 1)
        x0_c, x0_u = estimate(x.repeat(2, 1, 1), prev).chunk(2)
        x0 = edit(x0_u + guidance.to(x.dtype) * (x0_c - x0_u))
        x0_self = x0 if guided_self == "guided" else torch.cat([edit(x0_c), edit(x0_u)])
    eps = (x - c.sqrt_ab * x0) / c.sqrt_1m_ab
    x_prev = c.sqrt_ab_prev * x0 + c.c_eps * eps
    if noise is not None:
        x_prev = x_prev + c.sigma * noise
    return StepOut(x_prev, x0, x0_self)


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


def initial_noise(
    model: CodeFusionModel, enc: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """x_T ~ N(0, I) [N, C, Dz]: the first draw of every sampling run, plain or graph."""
    cfg = model.config
    shape = (enc.shape[0], cfg.code_len, cfg.latent_dim)
    return torch.randn(shape, generator=generator, device=enc.device, dtype=enc.dtype)


@dataclass
class Prepared:
    """What every sampling run sets up before its first step, plain or graph (:func:`prepare`)."""

    x: torch.Tensor  # [N, C, Dz] the first step's x: x_T, or the edited input's x_t0
    plan: StepPlan
    enc_n: torch.Tensor  # N's cross-attention source: E(s) [N], or [E(s); ξ] [2N] (guidance)
    mask_n: torch.Tensor | None  # its mask (the unconditional half: all ones)
    guidance: torch.Tensor | None  # 0-d w; None: no unconditional half (w = 1)

    def self_condition_rows(self, guided_self: str) -> int:
        """Rows of the self-conditioning input: 2N with guidance "own", else N."""
        n = self.x.shape[0]
        return 2 * n if self.guidance is not None and guided_self == "own" else n


def prepare(
    model: CodeFusionModel,
    schedule: SqrtSchedule,
    enc: torch.Tensor,
    cross_mask: torch.Tensor | None,
    generator: torch.Generator,
    options: SamplingOptions,
    start: torch.Tensor | None = None,
) -> Prepared:
    """The plan, the first latent and N's conditioning, drawn from ``generator`` in a fixed
    order: x_T (the edit's ε when ``start`` is given), then ξ for guidance. ``start``: canvas
    ids [N, C] of the code to edit (``options.strength`` says from which step)."""
    if (start is None) != (options.strength is None):
        raise ValueError("an edit takes both start tokens and a strength, a sample neither")
    x = initial_noise(model, enc, generator)
    plan = StepPlan.for_options(schedule, options)
    if start is not None:
        x0 = model.embed_code(start.to(enc.device)).to(x.dtype)
        # t0 = 0: no step runs and D reads L(code) itself (strength -> 0 returns the input).
        x = x0 if len(plan) == 0 else schedule.q_sample(x0, plan.t[:1].expand(x.shape[0]), x)
    enc_n, mask_n, w = enc, cross_mask, None
    if options.guidance != 1:
        xi = torch.randn(enc.shape, generator=generator, device=enc.device, dtype=enc.dtype)
        enc_n = torch.cat([enc, xi])
        if cross_mask is not None:
            mask_n = torch.cat([cross_mask, torch.ones_like(cross_mask)])
        w = torch.tensor(float(options.guidance), device=enc.device)
    return Prepared(x, plan, enc_n, mask_n, w)


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
    start: torch.Tensor | None = None,
) -> SampleOutput:
    """Denoise one batch of draws as ``options`` say (default ``SamplingOptions()``):
    ``known`` are given tokens (fixed end positions, infilling), ``trace_at`` the steps at which
    x̂0 is decoded too (``SampleOutput.trace``), ``start`` the canvas ids [N, C] of code to
    edit from step t0 (``options.strength``, SDEdit).

    This is the plain loop, one :func:`ddim_step` per step of the plan, then D and H once; with
    ``options.fast`` (default: on CUDA) on CUDA tensors and cached K/V, the graph runner
    (``graph.py``) replays the same step from the same x_T and noise instead. D always reads the
    conditional E(s)."""
    options = SamplingOptions() if options is None else options
    fast = enc.is_cuda if options.fast is None else options.fast
    if fast and enc.is_cuda and options.cache_cross_kv:
        from codefusion.sampling.graph import sample_graph

        return sample_graph(
            model, schedule, enc, cross_mask, generator, options, known, trace_at, start=start
        )
    cfg = model.config
    n = enc.shape[0]
    prep = prepare(model, schedule, enc, cross_mask, generator, options, start)
    x, plan = prep.x, prep.plan
    cached = options.cache_cross_kv
    kv_n = model.denoiser.cross_kv(prep.enc_n) if cached else None
    kv_d = model.decoder.cross_kv(enc) if cached else None
    table = None
    if options.clamp:
        table = model.embed_code(torch.arange(cfg.vocab_size, device=enc.device))
    known_mask, known_x0 = known_inputs(model, known)
    trace: list[tuple[int, torch.Tensor]] = []
    x0_self = None  # self-conditioning input: zeros at the first step
    if cfg.self_condition:
        rows = prep.self_condition_rows(options.guidance_self_condition)
        x0_self = x.new_zeros((rows, *x.shape[1:]))
    for i, t in enumerate(plan.ts):
        last = i == len(plan) - 1
        kv = kv_n if cached else model.denoiser.cross_kv(prep.enc_n)
        noise = None
        if options.eta > 0 and not last:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        out = ddim_step(
            model,
            x,
            plan.t[i].expand(n),
            plan.coef_at(i),
            kv,
            prep.mask_n,
            table,
            noise,
            x0_prev=x0_self,
            known_mask=known_mask,
            known_x0=known_x0,
            guidance=prep.guidance,
            guided_self=options.guidance_self_condition,
        )
        if cfg.self_condition:
            x0_self = out.x0_self
        if trace_at is not None and t in trace_at:
            kv_dec = kv_d or model.decoder.cross_kv(enc)
            trace.append((t, decode_tokens(model, out.x0, kv_dec, cross_mask, known)[0]))
        x = out.x0 if last else out.x_prev
    kv_dec = kv_d or model.decoder.cross_kv(enc)
    tokens, scores = decode_tokens(model, x, kv_dec, cross_mask, known)
    return SampleOutput(tokens, scores, trace)
