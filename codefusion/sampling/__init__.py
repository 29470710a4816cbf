"""Sampling from CodeFusion, one module per piece:

options.py   SamplingOptions: what a request asks for
ddim.py      the DDIM update (pure) and the plan of steps with their coefficients
denoise.py   each step's x̂0: N, guidance, self-conditioning, clamping, given tokens
request.py   what a request sets up (x_T, the conditioning) and reads at the end (D, H)
loop.py      the plain loop
graph.py     the CUDA-graph runner: the same step, compiled, captured once, replayed
run.py       :func:`sample`, which picks one of the two
"""

from codefusion.sampling.options import SamplingOptions
from codefusion.sampling.request import Known, SampleOutput
from codefusion.sampling.run import sample

__all__ = ["Known", "SampleOutput", "SamplingOptions", "sample"]
