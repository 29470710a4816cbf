"""Fused kernels for memory-bound work in CodeFusion, with PyTorch fallbacks.

Two operations dominate memory traffic without doing much arithmetic:

* :func:`modulated_layer_norm`: the denoiser's adaLN, ``LayerNorm(x) * (1 + scale) + shift``
  with the timestep's per-example ``shift``/``scale``. Unfused it is three passes over
  ``[B, N, D]``; fused it is one read of ``x`` and one write of ``y``.
* :func:`linear_cross_entropy`: the head H followed by the token cross-entropy. The fused path
  never materialises the ``[N, V]`` logits in fp32 at once; it streams row chunks through an
  online-logsumexp kernel and recomputes them chunk by chunk in the backward.

Each public function dispatches: on CUDA tensors (Triton installed, dtype fp32/bf16/fp16, not
inside ``torch.compile``) it runs the Triton kernels of :mod:`codefusion.kernels.triton_kernels`, elsewhere the plain
PyTorch references of :mod:`codefusion.kernels.reference`. Triton is optional: without it this
package imports fine and always uses the references. Setting ``CODEFUSION_DISABLE_TRITON=1``
forces the references too (useful to bisect a numerical difference).
"""

from __future__ import annotations

import os

import torch

from . import reference

try:  # Triton is optional (CPU-only installs, macOS, ...).
    from . import triton_kernels as _triton_kernels
except ImportError:  # pragma: no cover - depends on the environment
    _triton_kernels = None

HAS_TRITON: bool = _triton_kernels is not None

__all__ = [
    "HAS_TRITON",
    "linear_cross_entropy",
    "modulated_layer_norm",
    "reference",
    "use_triton",
]

_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Whether the Triton path would be taken for these (floating-point) tensors: Triton is
    installed, not disabled by ``CODEFUSION_DISABLE_TRITON``, and every tensor is a CUDA tensor
    of a dtype the kernels support."""
    if not HAS_TRITON or torch.compiler.is_compiling():
        # Under torch.compile the references are traced instead: inductor fuses them into its
        # own kernels (the same single pass), and no opaque launch interrupts its graph.
        return False
    if os.environ.get("CODEFUSION_DISABLE_TRITON", "") not in ("", "0"):
        return False
    present = [t for t in tensors if t is not None]
    return bool(present) and all(t.is_cuda and t.dtype in _TRITON_DTYPES for t in present)


def modulated_layer_norm(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """``LayerNorm(x) * (1 + scale[:, None, :]) + shift[:, None, :]`` over the last dim.

    ``x`` ``[B, N, D]``; ``shift``, ``scale`` ``[B, D]``; LayerNorm without affine parameters
    (biased variance, ``eps`` inside the square root). Statistics and accumulation in fp32; the
    result has the promoted dtype of the inputs (bf16 in, bf16 out). Differentiable in ``x``,
    ``shift`` and ``scale``.
    """
    if use_triton(x, shift, scale):
        return _triton_kernels.modulated_layer_norm(x, shift, scale, eps)
    return reference.modulated_layer_norm(x, shift, scale, eps)


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    position_weights: torch.Tensor,
) -> torch.Tensor:
    """``sum_i position_weights[i] * cross_entropy(h[i] @ weight.T + bias, targets[i])``.

    ``h`` ``[N, Dz]``, ``weight`` ``[V, Dz]``, ``bias`` ``[V]`` or None, ``targets`` ``[N]``
    int64 in ``[0, V)``, ``position_weights`` ``[N]`` float (0 masks a position). Returns a 0-d
    fp32 tensor, differentiable in ``h``, ``weight``, ``bias`` and ``position_weights``.
    """
    if use_triton(h, weight, bias, position_weights) and targets.is_cuda:
        return _triton_kernels.linear_cross_entropy(h, weight, bias, targets, position_weights)
    return reference.linear_cross_entropy(h, weight, bias, targets, position_weights)
