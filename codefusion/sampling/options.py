"""How to sample: one dataclass of options, carried from ``CodeFusion.generate`` down to the step.

A sampling feature adds its option here and reads it where it acts: in the step plan
(``ddim.StepPlan.for_options``: the start step of an edit), in the request's set-up
(``request.prepare``: the edit's x_t0, guidance's unconditional half, the denoise spec) or in the
denoise function (``denoise.py``: guidance, clamping). The CLI flags are derived from the fields
(:mod:`codefusion.options`).
"""

from __future__ import annotations

from dataclasses import dataclass

from codefusion.options import option


@dataclass(frozen=True)
class SamplingOptions:
    """CodeFusion's generation options: ``generate(prompts, k, ..., **options)`` builds one
    (an unknown name is a ``GenerationError``) and :func:`codefusion.sampling.sample` takes it."""

    steps: int | None = option(
        None,
        "denoising steps; fewer than T are respaced evenly (DDIM); default all T (the masked "
        "model: unmasking steps, default one per canvas position)",
        type=int,
    )
    eta: float = option(0.0, "DDIM eta: 0 deterministic given the noise, 1 ancestral", type=float)
    clamp: bool = option(
        False, "clamp each step's x0 estimate to the nearest token embedding", type=bool
    )
    guidance: float = option(
        1.0,
        "classifier-free guidance scale w: 1 none, 0 no prompt (a model fine-tuned with "
        "prompt_dropout)",
        type=float,
    )
    fast: bool | None = option(
        None, "the CUDA-graph bf16 sampler; default on CUDA, never on CPU", type=bool
    )
    # The benchmark's reference: N's cross-attention K/V computed again at every step.
    cache_cross_kv: bool = option(True, "", cli=False)
    # Editing (SDEdit; CodeFusion.edit, whose own flag it is), in (0, 1]: the run starts from
    # the input's L(code) noised to t0 = round(strength (T - 1)); None: not an edit.
    strength: float | None = option(None, "", cli=False)
