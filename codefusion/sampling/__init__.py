"""Sampling from CodeFusion: the DDIM loop (``ddim.py``), its CUDA-graph runner (``graph.py``)
and the options both read (``options.py``).

:func:`sample` denoises one batch of draws: the plain loop, or on CUDA (``options.fast``, with
cached K/V) the graph runner. Both draw the same x_T and noise from the caller's generator, in
the same order.
"""

from codefusion.sampling.ddim import Known, SampleOutput, sample
from codefusion.sampling.options import LENGTH_MODES, SamplingOptions

__all__ = ["LENGTH_MODES", "Known", "SampleOutput", "SamplingOptions", "sample"]
