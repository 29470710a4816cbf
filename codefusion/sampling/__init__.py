"""Sampling from CodeFusion, one module per piece:

    options.py   SamplingOptions: what a request asks for
    ddim.py      the DDIM update (pure) and the plan of steps with their coefficients
    denoise.py   each step's x̂0: N, guidance, self-conditioning, clamping, given tokens
    request.py   what a request sets up (x_T, the conditioning) and reads at the end (D, H)
    loop.py      the plain loop
    graph.py     the CUDA-graph runner: the same step, compiled, captured once, replayed
    run.py       :func:`sample`, which picks one of the two

The names below are imported when first used (PEP 562): the command line reads
``SamplingOptions``'s fields for its flags without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codefusion.sampling.options import SamplingOptions
    from codefusion.sampling.request import Known, SampleOutput
    from codefusion.sampling.run import sample

_LAZY = {
    "SamplingOptions": "codefusion.sampling.options",
    "Known": "codefusion.sampling.request",
    "SampleOutput": "codefusion.sampling.request",
    "sample": "codefusion.sampling.run",
}
__all__ = ["Known", "SampleOutput", "SamplingOptions", "sample"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'codefusion.sampling' has no attribute {name!r}")
