"""Absorbing-state ("masked") diffusion over the code canvas: the forward process, its
continuous-time training loss, and the unmasking sampler (MDLM, Sahoo et al. 2024).

Notation (MDLM's, for the log-linear schedule):

    x        clean canvas ids [B, C] (code, end token, pads)
    t        diffusion time in (0, 1]; 1 = every position masked
    alpha_t  probability that a position is still clean at t: alpha_t = 1 - t (log-linear)
    z_t      x with each position independently replaced by [MASK] with probability 1 - alpha_t
    p(x|z)   the network's distribution at each position; [MASK] itself gets probability 0
             ("zero masking") and clean positions of z are copied ("carry-over"), so only the
             masked positions carry loss

Loss (the continuous-time ELBO, MDLM eq. 11): E_t [ alpha'_t / (1 - alpha_t) * sum over masked
positions of log p(x_i | z_t) ] = E_t [ (1/t) * sum_masked -log p(x_i | z_t) ], divided by the
canvas length so that it reads per token. t is drawn low-discrepancy over the batch (one uniform
offset, rows spread evenly), which lowers the variance of the 1/t weight without bias.

Sampling: from the all-masked canvas (given tokens of an infill never masked) through ``steps``
steps t_j = 1 - j/steps. Step j unmasks positions so that, of the n positions that started
masked, floor(n (1 - j/steps)) stay masked: the ancestral sampler's expected count made exact,
so that with as many steps as positions each step unmasks exactly one, and all are unmasked at
the end. Which positions: a random order (MDLM), or the most confident first (MaskGIT/LLaDA);
each unmasked token is drawn from p(x | z_t) and never changes afterwards. The network has no
time input, so a step in which nothing was unmasked since the last call reuses its output
(MDLM's cached sampler) — the output is the same, the call is saved.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from codefusion.decoding import ORDERS

MIN_T = 1e-3  # the loss's smallest t: 1/t stays finite


def sample_times(batch: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Low-discrepancy times in [MIN_T, 1]: (u + i / B) mod 1 for one uniform u."""
    u = torch.rand((), generator=gen, device=device)
    t = (u + torch.arange(batch, device=device) / batch) % 1.0
    return t * (1 - MIN_T) + MIN_T


def mask_canvas(
    x: torch.Tensor, t: torch.Tensor, mask_id: int, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """z_t and where it is masked: each position of row b masked with probability t[b]."""
    masked = torch.rand(x.shape, generator=gen, device=x.device) < t[:, None]
    return x.masked_fill(masked, mask_id), masked


def masked_loss(
    logits: torch.Tensor, x: torch.Tensor, masked: torch.Tensor, t: torch.Tensor, mask_id: int
) -> dict[str, torch.Tensor]:
    """The continuous-time loss of one batch: ``{"loss", "token_acc"}`` (the accuracy of the
    argmax on masked positions). ``logits`` [B, C, V] from the network on z_t."""
    logits = logits.float()
    logits[..., mask_id] = float("-inf")  # zero masking: [MASK] is never the answer
    nll = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")  # [B, C]
    per_row = (nll * masked).sum(1) / t  # (1/t) sum over masked positions
    loss = per_row.sum() / x.numel()
    with torch.no_grad():
        hits = (logits.argmax(-1) == x) & masked
        acc = hits.sum().float() / masked.sum().clamp(min=1)
    return {"loss": loss, "token_acc": acc}


def still_masked(n: torch.Tensor, j: int, steps: int) -> torch.Tensor:
    """How many of the ``n`` [B] initially masked positions stay masked after step j."""
    return torch.div(n * (steps - j), steps, rounding_mode="floor")


def unmask(
    net: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    mask_id: int,
    steps: int,
    gen: torch.Generator,
    order: str = "random",
    banned: torch.Tensor | None = None,
    trace_at: set[int] | None = None,
    cache: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, torch.Tensor]], int]:
    """Unmask ``z`` [B, C] (masked positions hold ``mask_id``; the others are given and kept).

    ``net(z) -> logits [B, C, V]``. ``banned`` [B, C, V] or [B, C, 1]-broadcastable bool: tokens
    a position may not take (an infill hole of fixed length takes no end token), besides
    [MASK]. Returns the final canvas, each position's log-probability when it was unmasked
    (0 for given positions), the trace (step, canvas) at ``trace_at``, and the number of
    network calls."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    z = z.clone()
    free = z == mask_id
    n = free.sum(1)
    logp_at = torch.zeros(z.shape, device=z.device)
    trace: list[tuple[int, torch.Tensor]] = []
    logits, calls, stale = None, 0, True
    for j in range(1, steps + 1):
        masked = z == mask_id
        unmask_now = masked.sum(1) - still_masked(n, j, steps)  # [B] how many this step
        if stale or not cache:  # uncached: every step calls the network
            logits = net(z).float()
            logits[..., mask_id] = float("-inf")
            if banned is not None:
                logits = logits.masked_fill(banned, float("-inf"))
            calls, stale = calls + 1, False
        if bool((unmask_now > 0).any()):
            logp = F.log_softmax(logits, -1)
            drawn = torch.multinomial(logp.exp().flatten(0, 1), 1, generator=gen).view(z.shape)
            drawn_logp = logp.gather(-1, drawn[..., None]).squeeze(-1)
            if order == "random":
                priority = torch.rand(z.shape, generator=gen, device=z.device)
            else:
                priority = drawn_logp.clone()
            priority = priority.masked_fill(~masked, float("-inf"))
            rank = priority.argsort(1, descending=True).argsort(1)  # 0 = first to unmask
            chosen = masked & (rank < unmask_now[:, None])
            z = torch.where(chosen, drawn, z)
            logp_at = torch.where(chosen, drawn_logp, logp_at)
            stale = bool(chosen.any())
        if trace_at and j in trace_at:
            trace.append((j, z.clone()))
    return z, logp_at, trace, calls
