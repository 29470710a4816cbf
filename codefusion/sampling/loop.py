"""The plain sampler: x_T ~ N(0, I) -> one step per entry of the plan (x̂0 from the request's
denoise function, then the DDIM update) -> D and H once on the last x̂0 -> argmax.

The reference the graph runner (``graph.py``) is tested against, and the path on CPU. With
``cache_cross_kv=False`` N's cross-attention K/V are computed again at every step (the
benchmark's reference for the cache).
"""

from __future__ import annotations

import torch

from codefusion.model import CodeFusionModel, Prompt
from codefusion.sampling.ddim import ddim_update
from codefusion.sampling.denoise import make_denoise
from codefusion.sampling.options import SamplingOptions
from codefusion.sampling.request import Known, SampleOutput, decode_tokens, prepare
from codefusion.schedule import SqrtSchedule


@torch.no_grad()
def sample_loop(
    model: CodeFusionModel,
    schedule: SqrtSchedule,
    enc: torch.Tensor,
    cross_mask: torch.Tensor | None,
    num_draws: int,
    generator: torch.Generator,
    options: SamplingOptions,
    known: Known | None = None,
    trace_at: set[int] | None = None,
    start: torch.Tensor | None = None,
    prompt: Prompt | None = None,
) -> SampleOutput:
    """Denoise ``num_draws`` draws of each prompt of ``enc`` (arguments: :func:`sample`)."""
    prep = prepare(
        model, schedule, enc, cross_mask, num_draws, generator, options, known, start, prompt
    )
    x, plan, n = prep.x, prep.plan, prep.x.shape[0]
    denoise = make_denoise(prep.spec, model.denoiser)
    cached = options.cache_cross_kv
    cond = prep.conditioning(model.denoiser.cross_kv(prep.enc_n) if cached else [])
    kv_d = model.decoder.cross_kv(enc)
    x0_self = prep.first_self_condition()
    trace: list[tuple[int, torch.Tensor]] = []
    for i, t in enumerate(plan.ts):
        if not cached:
            cond.kv = model.denoiser.cross_kv(prep.enc_n)
        noise = None
        if options.eta > 0 and i < len(plan) - 1:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        c = plan.coef_at(i)
        x0, x0_self = denoise(x, plan.t[i].expand(n), c, cond, x0_self)
        if trace_at is not None and t in trace_at:
            trace.append((t, decode_tokens(model, x0, kv_d, cross_mask, known, prompt)[0]))
        x = x0 if i == len(plan) - 1 else ddim_update(x, x0, c, noise)
    tokens, scores = decode_tokens(model, x, kv_d, cross_mask, known, prompt)
    return SampleOutput(tokens, scores, trace)
