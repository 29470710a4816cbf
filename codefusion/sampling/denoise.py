"""Each step's x̂0: the network call and what a request does to its output, built once per
request from a small frozen :class:`DenoiseSpec`.

In this order (each optional, as the spec says):

1. **N** on x_t (``prediction="eps"``: x̂0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t), reading its previous
   x̂0 when self-conditioned (zeros at the first step).
2. **Classifier-free guidance** (``guided``, w ≠ 1): N runs once on 2N rows, the conditional
   ones against E(s) and the unconditional ones against ξ ~ N(0, I) of E(s)'s shape with no
   mask (the unconditional rows of training), and x̂0 = x̂0_u + w (x̂0_c - x̂0_u). Each half
   self-conditions on its own previous estimate, as in training, where N only ever read its own.
3. **Clamping** (Diffusion-LM): each position to the nearest token embedding.
4. **Given tokens** (infilling): L(token) at their positions (see ddim.py's notation).

:class:`Conditioning` holds the request's tensors that no step changes: N's cross-attention K/V
(one row per prompt, ``[2P]`` with guidance: conditional then unconditional), the mask, w, the
clamping table and the given tokens. The plain loop passes it as it is; the graph runner passes
static copies of it, so that one captured graph serves every step of every call of a shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from codefusion.model import KV, Prompt
from codefusion.sampling.ddim import StepCoef


@dataclass(frozen=True)
class DenoiseSpec:
    """What a request does at each step (the model's parametrisation and the request's
    options); hashable: the graph runner keys its graphs on it."""

    prediction: str = "x0"  # what N predicts: "x0", "eps" or "tokens" (x0 = E_p[L])
    self_condition: bool = False  # N reads its previous x̂0
    guided: bool = False  # classifier-free guidance: N on 2N rows, x̂0 combined
    clamp: bool = False  # x̂0 to the nearest token embedding
    known: bool = False  # given tokens replace x̂0 at their positions


@dataclass
class Conditioning:
    """A request's tensors that every step reads and none changes."""

    kv: list[KV]  # N's cross-attention K/V per layer: [P] rows, [2P] when guided
    mask: torch.Tensor | None  # [P or 2P, 1, 1, S] bool; None: nothing padded
    guidance: torch.Tensor | None = None  # 0-d w (guided)
    table: torch.Tensor | None = None  # [V, Dz] every L(v) (clamp; prediction tokens)
    prompt: Prompt | None = None  # [P or 2P] what N's pointer reads (prediction tokens)
    known_mask: torch.Tensor | None = None  # [N, C, 1] bool (known)
    known_x0: torch.Tensor | None = None  # [N, C, Dz] L(given tokens) (known)


def nearest_embedding(x0: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Clamp each position to the closest token embedding (Diffusion-LM's clamping trick).

    L's outputs all have the same norm, so the nearest one is the one with the largest dot product.
    """
    return table[(x0 @ table.T).argmax(-1)]


# (x_t [N], t [N], the step's coefficients, the conditioning, the self-conditioning input
# [N, or 2N when guided]) -> (x̂0 [N], the next step's self-conditioning input)
Denoise = Callable[
    [torch.Tensor, torch.Tensor, StepCoef, Conditioning, torch.Tensor],
    tuple[torch.Tensor, torch.Tensor],
]


def make_denoise(spec: DenoiseSpec, net: Callable[..., torch.Tensor]) -> Denoise:
    """The denoise function of a request: ``net`` is N (or the graph runner's low-precision
    copy of it); the output is computed in x_t's dtype whatever N's."""

    def estimate(x: torch.Tensor, t: torch.Tensor, c: StepCoef, cond: Conditioning, prev):
        prev = prev if spec.self_condition else None
        if spec.prediction == "tokens":
            return net(x, t, cond.kv, cond.mask, prev, cond.prompt, cond.table).to(x.dtype)
        out = net(x, t, cond.kv, cond.mask, prev).to(x.dtype)
        return out if spec.prediction == "x0" else (x - c.sqrt_1m_ab * out) / c.sqrt_ab

    def edit(x0: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if spec.clamp:
            x0 = nearest_embedding(x0, cond.table)
        if spec.known:
            x0 = torch.where(cond.known_mask, cond.known_x0.to(x0.dtype), x0)
        return x0

    def denoise(x, t, c, cond, x0_self):
        if not spec.guided:
            x0 = edit(estimate(x, t, c, cond, x0_self), cond)
            return x0, x0
        x0_c, x0_u = estimate(torch.cat([x, x]), torch.cat([t, t]), c, cond, x0_self).chunk(2)
        x0 = edit(x0_u + cond.guidance.to(x.dtype) * (x0_c - x0_u), cond)
        # The next step's input: each half's own estimate, edited as unguided sampling would.
        return x0, torch.cat([edit(x0_c, cond), edit(x0_u, cond)])

    return denoise
