"""Sampling: x_T ~ N(0, I) -> denoise over the schedule -> x0_hat -> D and H once -> argmax.

All draws of all prompts run as one batch. The prompt is encoded once and the cross-attention
keys/values of E's output are computed once per call (``cache_cross_kv=True``): every one of
the up-to-1200 denoising steps reuses them. Steps follow DDIM: with ``eta = 0`` a respaced run
of S < T steps is deterministic given x_T; ``eta = 1`` is ancestral sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from codefusion.diffusion import content_mask
from codefusion.model import KV, CodeFusionModel
from codefusion.schedule import SqrtSchedule


@dataclass
class SampleOutput:
    tokens: torch.Tensor  # [N, C] argmax ids
    scores: torch.Tensor  # [N] mean log-probability of the chosen tokens (content + end)
    trace: list[tuple[int, torch.Tensor]] = field(
        default_factory=list
    )  # (t, tokens decoded from x0_hat)


def nearest_embedding(x0: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Clamp each position to the closest token embedding (Diffusion-LM's clamping trick).

    L's outputs all have the same norm, so the nearest one is the one with the largest dot product.
    """
    return table[(x0 @ table.T).argmax(-1)]


@torch.no_grad()
def decode_tokens(
    model: CodeFusionModel, x0: torch.Tensor, kv_d: list[KV], cross_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """D and H on x0: argmax tokens [N, C] and their mean log-probability [N]."""
    logp = F.log_softmax(model.logits(model.decode(x0, kv_d, cross_mask)).float(), dim=-1)
    best, tokens = logp.max(-1)
    content = content_mask(tokens, model.config.pad_id, model.config.eos_id).float()
    return tokens, (best * content).sum(-1) / content.sum(-1)


@torch.no_grad()
def sample(
    model: CodeFusionModel,
    schedule: SqrtSchedule,
    enc: torch.Tensor,  # [N, S, De] E(s), already repeated per draw
    cross_mask: torch.Tensor | None,  # [N, 1, 1, S]
    generator: torch.Generator,
    steps: int | None = None,
    eta: float = 0.0,
    clamp: bool = False,
    cache_cross_kv: bool = True,
    trace_at: set[int] | None = None,
) -> SampleOutput:
    """Denoise one batch of draws; ``steps`` None means all T steps."""
    cfg = model.config
    n = enc.shape[0]
    x = torch.randn(
        (n, cfg.code_len, cfg.latent_dim), generator=generator, device=enc.device, dtype=enc.dtype
    )
    kv_n, kv_d = model.cross_kv(enc) if cache_cross_kv else (None, None)
    table = None
    if clamp:
        table = model.embed_code(torch.arange(cfg.vocab_size, device=enc.device))
    ts = schedule.timesteps(steps)
    ab = schedule.alphas_cumprod
    trace: list[tuple[int, torch.Tensor]] = []
    for i, t in enumerate(ts):
        tt = torch.full((n,), t, device=enc.device, dtype=torch.long)
        kv = kv_n if cache_cross_kv else model.denoiser.cross_kv(enc)
        out = model.denoise(x, tt, kv, cross_mask)
        if cfg.prediction == "x0":
            x0 = out
        else:
            x0 = schedule.x0_from_eps(x, tt, out)
        if table is not None:
            x0 = nearest_embedding(x0, table)
        if trace_at is not None and t in trace_at:
            trace.append(
                (t, decode_tokens(model, x0, kv_d or model.decoder.cross_kv(enc), cross_mask)[0])
            )
        if i == len(ts) - 1:
            x = x0
            break
        eps = schedule.eps_from_x0(x, tt, x0)
        a_t, a_prev = ab[t], ab[ts[i + 1]]
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
        if eta > 0:
            x = x + sigma * torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
    tokens, scores = decode_tokens(model, x, kv_d or model.decoder.cross_kv(enc), cross_mask)
    return SampleOutput(tokens, scores, trace)
