"""The DDIM update: x_t' from x_t, x̂0, the step's coefficients and noise. Pure: no network.

Notation (DDIM, Song et al. 2021, eq. 12; ᾱ is the schedule's ``alphas_cumprod``; t' is the
step after t in the plan, smaller; at the last step the sampler takes x̂0 itself):

    x_t                                        x           the latent at step t    [N, C, Dz]
    x̂0 = N(x_t, t, E(s) [, previous x̂0])     x0          N's estimate of L(y) (denoise.py)
    ε̂  = (x_t - √ᾱ_t x̂0) / √(1 - ᾱ_t)         eps         the noise that x̂0 implies
    σ_t = η √((1 - ᾱ_t') / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_t')    sigma
    x_t' = √ᾱ_t' x̂0 + √(1 - ᾱ_t' - σ_t²) ε̂ + σ_t z,   z ~ N(0, I)     x_prev, noise

    StepCoef field   sqrt_ab   sqrt_1m_ab    sqrt_ab_prev   c_eps               sigma
    value            √ᾱ_t      √(1 - ᾱ_t)    √ᾱ_t'          √(1 - ᾱ_t' - σ_t²)  σ_t

η = 0 (``eta``) is deterministic given x_T, so a respaced run of S < T steps is too; η = 1 is
ancestral sampling.

Given tokens (infilling). Replacing x̂0 by L(tok) at a given position before the update keeps
that position on the forward process of tok: with x_t = √ᾱ_t L(tok) + √(1-ᾱ_t) ε, ε̂ = ε exactly,
so with η = 0 x_t' = √ᾱ_t' L(tok) + √(1-ᾱ_t') ε, the *same* ε at every step, i.e.
x_t = q_sample(L(tok), t, ε) along the whole (respaced) trajectory. With η > 0, c_eps² + σ_t² =
1 - ᾱ_t': still a draw of q(x_t' | L(tok)), now with partly fresh noise (RePaint's replacement).

Editing (SDEdit, ``strength`` s ∈ (0, 1]): the run starts at t0 = round(s (T - 1)) from
x_t0 = √ᾱ_t0 L(code) + √(1-ᾱ_t0) ε and takes the steps [t0] + those of the respaced plan below
t0 (:meth:`StepPlan.for_options`); t0 = 0 runs no step at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from codefusion.sampling.options import SamplingOptions
from codefusion.schedule import SqrtSchedule


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


def ddim_update(
    x: torch.Tensor, x0: torch.Tensor, c: StepCoef, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """DDIM's eq. 12: x_t' = √ᾱ_t' x̂0 + √(1 - ᾱ_t' - σ_t²) ε̂ + σ_t z (z = ``noise``, η > 0)."""
    eps = (x - c.sqrt_ab * x0) / c.sqrt_1m_ab
    x_prev = c.sqrt_ab_prev * x0 + c.c_eps * eps
    return x_prev if noise is None else x_prev + c.sigma * noise


def start_step(diffusion_steps: int, strength: float) -> int:
    """SDEdit's start step t0 = round(strength (T - 1)) for a strength in (0, 1]."""
    return round(strength * (diffusion_steps - 1))


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
