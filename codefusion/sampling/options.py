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

    - ``guidance``: classifier-free guidance scale w. N runs on the conditional rows and as
      many unconditional ones (E(s) := Gaussian noise, as trained) in one batch, and
      x̂0 = x̂0_u + w (x̂0_c - x̂0_u) before the update (``ddim.ddim_step``). 1 (default) is
      plain conditional sampling and runs no unconditional half; 0 is unconditional.
    - ``guidance_self_condition``: with guidance and a self-conditioned N, what each half reads
      as its previous estimate: "own" (its own, as in training) or "guided" (the combined x̂0).
    - ``strength``: editing (SDEdit; ``CodeFusion.edit``), in (0, 1]: the run starts from the
      input's L(code) noised to t0 = round(strength (T - 1)) and takes the plan's steps below
      t0 (``ddim.StepPlan.for_options``); the input's canvas ids are an argument of
      :func:`~codefusion.sampling.sample` (``start``) beside ``known``. t0 = 0 runs no step:
      D+H read L(code) itself. None: not an edit (``generate``, ``infill``).

    A sampling feature adds its option here and reads it where it acts: in the step plan
    (``ddim.StepPlan.for_options``: the start step of an edit), in the run's set-up
    (``ddim.prepare``: the edit's x_t0, guidance's unconditional half) or in the step
    (``ddim.ddim_step``: the guided combination of the two halves before the update). The
    plain loop and the graph runner both read them there.
    """

    steps: int | None = None
    eta: float = 0.0
    clamp: bool = False
    fast: bool | None = None
    cache_cross_kv: bool = True
    length: str | None = None
    length_candidates: int = 3
    guidance: float = 1.0
    guidance_self_condition: str = "own"
    strength: float | None = None
