"""How to sample: one dataclass of options, carried from ``CodeFusion.generate`` down to the step."""

from __future__ import annotations

from dataclasses import dataclass

LENGTH_MODES = ("free", "predicted")


@dataclass(frozen=True)
class SamplingOptions:
    """CodeFusion's generation options: ``generate(prompts, k, ..., **options)`` builds one
    (an unknown name is a ``GenerationError``), ``sample_draws`` and :func:`sample` take it.

    - ``steps``: denoising steps; None runs all T, fewer are respaced evenly (DDIM).
    - ``eta``: DDIM's η; 0 is deterministic given x_T, 1 is ancestral sampling.
    - ``clamp``: each step's x̂0 is replaced by the nearest token embedding (Diffusion-LM's
      clamping trick) before the update.
    - ``fast``: the CUDA-graph runner (``graph.py``: a bf16 copy of N, compiled, one captured
      step replayed per step); None means on CUDA. On CPU it is the plain loop either way.
    - ``cache_cross_kv``: the prompt's cross-attention keys/values computed once per call;
      False recomputes them at every step (the benchmark's reference; always the plain loop).
    - ``length``: who places the end token: "free" (N does), "predicted" (the length head's
      most likely lengths, given to the sampler as fixed positions, see ``ddim.Known``);
      None is "predicted" for a model with a length head, else "free".
    - ``length_candidates``: with "predicted", draw ``j`` of a prompt gets the ``(j mod
      length_candidates)``-th most likely length.

    A sampling feature adds its option here and reads it where it acts: in the step plan
    (``ddim.StepPlan.for_options``: e.g. a start step for SDEdit-style editing, whose noised
    input would be an argument of :func:`~codefusion.sampling.sample` beside ``known``) or in
    the step (``ddim.ddim_step``: e.g. a guidance scale for classifier-free guidance, the
    conditional and unconditional halves of one batch combined before the update).
    """

    steps: int | None = None
    eta: float = 0.0
    clamp: bool = False
    fast: bool | None = None
    cache_cross_kv: bool = True
    length: str | None = None
    length_candidates: int = 3
