"""Sampling from CodeFusion: the DDIM loop (``ddim.py``), its CUDA-graph runner (``graph.py``)
and the options both read (``options.py``).

:func:`sample` denoises one batch of draws: the graph runner on CUDA when ``options.fast``
asks for it (default: on CUDA) and K/V are cached, the plain loop otherwise. Both draw the
same x_T and noise from the caller's generator, in the same order.
"""

from __future__ import annotations

import torch

from codefusion.model import CodeFusionModel
from codefusion.sampling.ddim import Known, SampleOutput, sample_plain
from codefusion.sampling.options import LENGTH_MODES, SamplingOptions
from codefusion.schedule import SqrtSchedule

__all__ = ["LENGTH_MODES", "Known", "SampleOutput", "SamplingOptions", "sample"]


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
    """Denoise one batch of draws as ``options`` say (default ``SamplingOptions()``);
    ``known``: given tokens (fixed end positions, infilling); ``trace_at``: steps at which to
    decode x̂0 too (``trace``)."""
    options = SamplingOptions() if options is None else options
    fast = enc.is_cuda if options.fast is None else options.fast
    if fast and enc.is_cuda and options.cache_cross_kv:
        from codefusion.sampling.graph import sample_graph

        return sample_graph(model, schedule, enc, cross_mask, generator, options, known, trace_at)
    return sample_plain(model, schedule, enc, cross_mask, generator, options, known, trace_at)
