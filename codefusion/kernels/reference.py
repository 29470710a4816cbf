"""Plain PyTorch references for the fused kernels in :mod:`codefusion.kernels`.

These are the ground truth the Triton kernels are tested against and the path the dispatcher
takes on CPU (and whenever Triton is unavailable). They are written for clarity, not memory:

* :func:`modulated_layer_norm` materialises the normalised activations and the modulated output
  as separate tensors (several full read/write passes over ``[B, N, D]``), which is exactly the
  memory traffic the fused kernel removes.
* :func:`linear_cross_entropy` materialises the full ``[N, V]`` logits (and, inside
  ``F.cross_entropy``, their log-softmax), which is what the chunked kernel avoids.

Both compute in at least fp32 (a bf16/fp16 input is upcast; float64 stays float64 so that
``torch.autograd.gradcheck`` can be run on them) and are differentiable by ordinary autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["modulated_layer_norm", "linear_cross_entropy", "modulated_output_dtype"]


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The accumulation dtype: the promoted input dtype, but never below fp32."""
    out = torch.float32
    for d in dtypes:
        out = torch.promote_types(out, d)
    return out


def modulated_output_dtype(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
) -> torch.dtype:
    """Output dtype of :func:`modulated_layer_norm`: ordinary type promotion of the three inputs,
    i.e. what ``x * (1 + scale) + shift`` would return (bf16 in, bf16 out)."""
    return torch.promote_types(x.dtype, torch.promote_types(shift.dtype, scale.dtype))


def _check_modulated_shapes(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be [B, N, D], got shape {tuple(x.shape)}")
    b, _, d = x.shape
    for name, t in (("shift", shift), ("scale", scale)):
        if tuple(t.shape) != (b, d):
            raise ValueError(f"{name} must be [B, D] = {(b, d)}, got {tuple(t.shape)}")


def modulated_layer_norm(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """adaLN: ``LayerNorm(x) * (1 + scale[:, None]) + shift[:, None]``.

    ``x`` is ``[B, N, D]``; ``shift`` and ``scale`` are ``[B, D]``. The LayerNorm has no affine
    parameters (the modulation plays that role) and normalises over the last dim with the
    biased variance, like ``nn.LayerNorm(D, elementwise_affine=False, eps=eps)``. Computed in
    fp32 (or float64), returned in :func:`modulated_output_dtype`.
    """
    _check_modulated_shapes(x, shift, scale)
    cd = _compute_dtype(x.dtype, shift.dtype, scale.dtype)
    xhat = F.layer_norm(x.to(cd), (x.shape[-1],), eps=eps)
    y = xhat * (1 + scale.to(cd).unsqueeze(1)) + shift.to(cd).unsqueeze(1)
    return y.to(modulated_output_dtype(x, shift, scale))


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    position_weights: torch.Tensor,
) -> torch.Tensor:
    """``sum_i position_weights[i] * CE(h[i] @ weight.T + bias, targets[i])``, a 0-d fp32 tensor
    (float64 if any input is float64).

    ``h`` is ``[N, Dz]``, ``weight`` ``[V, Dz]``, ``bias`` ``[V]`` (or None), ``targets`` ``[N]``
    int64 in ``[0, V)``, ``position_weights`` ``[N]`` float. The logits are computed in the
    input dtype (as ``nn.Linear`` would) and the cross-entropy in at least fp32.
    """
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(f"h [N, Dz] and weight [V, Dz] expected, got {h.shape}, {weight.shape}")
    logits = F.linear(h, weight, bias)
    cd = _compute_dtype(logits.dtype, position_weights.dtype)
    ce = F.cross_entropy(logits.to(cd), targets, reduction="none")
    return (ce * position_weights.to(cd)).sum()
