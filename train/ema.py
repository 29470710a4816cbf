"""Exponential moving average of the weights, with a warm-up, in one fused update per step.

Lightning's ``EMAWeightAveraging(decay=d)`` starts the average at the first step's weights and
applies ``d`` from then on: with ``d = 0.9999`` the export after 20,000 steps still holds
``0.9999^20000 = 13.5%`` of the (random) first-step weights. Here the decay of the k-th update
(k = optimizer step, from 0) is the usual warm-up

    decay_k = min(decay, (1 + k) / (10 + k))

so the average follows the weights closely early on and reaches ``decay`` after about
``10 / (1 - decay)`` steps. The update is one ``torch._foreach_lerp_`` over all floating-point
tensors (one fused launch per dtype/device group instead of a Python loop over ~400 tensors),
and reads the step from Lightning's ``global_step`` (a Python int): no device synchronisation,
and exact after a resume, since the checkpoint restores the step.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import WeightAveraging


def warmup_decay(decay: float, step: int) -> float:
    """The decay applied at the ``step``-th update (0-based)."""
    return min(decay, (1.0 + step) / (10.0 + step))


class _ForeachEMA:
    """``multi_avg_fn`` of ``torch.optim.swa_utils.AveragedModel``: avg <- lerp(avg, cur, 1 - d)."""

    def __init__(self, decay: float) -> None:
        self.decay, self.step = decay, 0

    def __call__(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n: Any) -> None:
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            avg, cur = zip(*floats, strict=True)
            torch._foreach_lerp_(list(avg), list(cur), 1.0 - warmup_decay(self.decay, self.step))


class EMA(WeightAveraging):
    """EMA of all weights with the warm-up above; exported (and validated) instead of the raw
    weights, as Lightning's ``WeightAveraging`` does."""

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self._update = _ForeachEMA(decay)
        super().__init__(multi_avg_fn=self._update)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:  # per-step averaging only, never at epoch ends
            return False
        self._update.step = step_idx
        return True
