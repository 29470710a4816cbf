"""The sampler's entry point: the plain loop (``loop.py``) or the CUDA-graph runner
(``graph.py``), which replays the same step from the same x_T and noise."""

from __future__ import annotations

import torch

from codefusion.model import CodeFusionModel, Prompt
from codefusion.sampling.loop import sample_loop
from codefusion.sampling.options import SamplingOptions
from codefusion.sampling.request import Known, SampleOutput
from codefusion.schedule import SqrtSchedule


@torch.no_grad()
def sample(
    model: CodeFusionModel,
    schedule: SqrtSchedule,
    enc: torch.Tensor,  # [P, S, De] E(s), once per prompt
    cross_mask: torch.Tensor | None,  # [P, 1, 1, S]; None: no prompt position is padding
    num_draws: int,
    generator: torch.Generator,
    options: SamplingOptions | None = None,
    known: Known | None = None,
    trace_at: set[int] | None = None,
    start: torch.Tensor | None = None,
    prompt: Prompt | None = None,
) -> SampleOutput:
    """Denoise ``num_draws`` draws of each prompt as ``options`` say (default
    ``SamplingOptions()``): ``known`` are given tokens of every draw ([P x num_draws, C],
    infilling), ``trace_at`` the steps at which x̂0 is decoded too (``SampleOutput.trace``),
    ``start`` the canvas ids [P x num_draws, C] of code to edit from step t0
    (``options.strength``, SDEdit), ``prompt`` what a model with a pointer copies from. Rows of
    the output: a prompt's draws consecutive.

    The plain loop, or with ``options.fast`` (default: on CUDA) on CUDA tensors and cached K/V,
    the graph runner. D always reads the conditional E(s)."""
    options = SamplingOptions() if options is None else options
    fast = enc.is_cuda if options.fast is None else options.fast
    args = (model, schedule, enc, cross_mask, num_draws, generator, options, known, trace_at, start)
    args += (prompt,)
    if fast and enc.is_cuda and options.cache_cross_kv:
        from codefusion.sampling.graph import sample_graph

        return sample_graph(*args)
    return sample_loop(*args)
