"""Exponential moving average of the weights, with a warm-up, in one fused update per step.

Lightning's ``EMAWeightAveraging(decay=d)`` starts the average at the first step's weights and
applies ``d`` from then on: with ``d = 0.9999`` the export after 20,000 steps still holds
``0.9999^20000 = 13.5%`` of the (random) first-step weights. Here the decay of the k-th update
(k = optimizer step, from 0) is the usual warm-up

    decay_k = min(decay, (1 + k) / (10 + k))

so the average follows the weights closely early on and reaches ``decay`` after about
``10 / (1 - decay)`` steps. The update is one ``torch._foreach_lerp_`` over all floating-point
tensors (one fused launch per dtype/device group instead of a Python loop over ~400 tensors),
and reads the step from Lightning's ``global_step`` (a Python int): exact after a resume, since
the checkpoint restores the step. ``AveragedModel.update_parameters`` itself branches twice per
call on its device-side count (two device syncs per step); :class:`_HostCountedAverage` keeps
that count on the host as well, so an update reads nothing back from the device.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import AveragedModel
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype


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


class _HostCountedAverage(AveragedModel):
    """``AveragedModel`` whose update never reads a device tensor on the host.

    ``AveragedModel.update_parameters`` evaluates ``bool(self.n_averaged == 0)`` and
    ``self.n_averaged > 0`` on its count, a buffer on the model's device: two device syncs per
    training step. This update does the same work (copy at the first update, then
    ``multi_avg_fn`` per device/dtype group; buffers averaged or copied as ``use_buffers``
    says) with the count mirrored in a Python int; ``n_averaged`` is still incremented on the
    device, so checkpoints hold it as before, and it is read once after a checkpoint load."""

    _host_count: int | None = None

    def load_state_dict(self, *args: Any, **kwargs: Any):
        self._host_count = None  # re-read n_averaged at the next update
        return super().load_state_dict(*args, **kwargs)

    def update_parameters(self, model: torch.nn.Module) -> None:
        if self._host_count is None:
            self._host_count = int(self.n_averaged)  # one read, at the first update of a fit
        if self.use_buffers:
            mine = itertools.chain(self.module.parameters(), self.module.buffers())
            theirs = itertools.chain(model.parameters(), model.buffers())
        else:
            mine, theirs = self.parameters(), model.parameters()
        avg, cur = [], []
        for a, c in zip(mine, theirs, strict=True):
            avg.append(a.detach())
            cur.append(c.detach().to(a.device))
        if self._host_count == 0:
            torch._foreach_copy_(avg, cur)
        else:
            groups = _group_tensors_by_device_and_dtype([avg, cur])
            for (device, _), ([a, c], _) in groups.items():
                self.multi_avg_fn(a, c, self.n_averaged.to(device))
        if not self.use_buffers:
            for b_avg, b_cur in zip(self.module.buffers(), model.buffers(), strict=True):
                b_avg.detach().copy_(b_cur.detach().to(b_avg.device))
        self.n_averaged += 1
        self._host_count += 1


class EMA(WeightAveraging):
    """EMA of all weights with the warm-up above; exported (and validated) instead of the raw
    weights, as Lightning's ``WeightAveraging`` does."""

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self._update = _ForeachEMA(decay)
        super().__init__(multi_avg_fn=self._update)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # builds the AveragedModel (a deep copy)
        if type(self._average_model) is AveragedModel:
            self._average_model.__class__ = _HostCountedAverage  # same state, sync-free update

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:  # per-step averaging only, never at epoch ends
            return False
        self._update.step = step_idx
        return True
