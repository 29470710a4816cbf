"""The noise schedule: square-root alpha-bar (Diffusion-LM, GENIE), forward noising q(x_t | x_0).

``alpha_bar(u) = 1 - sqrt(u + s)`` for ``u = t / T`` and s = 1e-4 (GENIE's); as in Diffusion-LM's code the discrete
betas come from ratios of consecutive alpha-bars, capped at 0.999 (the raw formula is negative
at u = 1). Index ``t = 0`` is the least noisy step, ``t = T - 1`` the noisiest.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SqrtSchedule(nn.Module):
    """Square-root schedule with T steps; holds the per-step constants as buffers."""

    def __init__(self, steps: int = 1200, offset: float = 1e-4, max_beta: float = 0.999) -> None:
        super().__init__()
        self.steps = steps

        def alpha_bar(u: float) -> float:
            return 1.0 - math.sqrt(u + offset)

        betas = [
            min(1.0 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta)
            for i in range(steps)
        ]
        ab = torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float64), dim=0)
        self.register_buffer("alphas_cumprod", ab.float(), persistent=False)
        self.register_buffer("sqrt_ab", ab.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_1m_ab", (1.0 - ab).sqrt().float(), persistent=False)

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] broadcast to ``like``'s shape ([B] -> [B, 1, 1])."""
        return values[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) at steps t: [B] -> [B]."""
        ab = self.alphas_cumprod[t]
        return ab / (1.0 - ab)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward noising: x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps."""
        return self._at(self.sqrt_ab, t, x0) * x0 + self._at(self.sqrt_1m_ab, t, x0) * noise

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (x_t - self._at(self.sqrt_ab, t, x_t) * x0) / self._at(self.sqrt_1m_ab, t, x_t)

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (x_t - self._at(self.sqrt_1m_ab, t, x_t) * eps) / self._at(self.sqrt_ab, t, x_t)

    def timesteps(self, num: int | None = None) -> list[int]:
        """Descending step indices for sampling: all T, or ``num`` evenly respaced (DDIM)."""
        num = self.steps if num is None else num
        if not 1 <= num <= self.steps:
            raise ValueError(f"sampling steps must be between 1 and {self.steps}, got {num}")
        if num == self.steps:
            return list(range(self.steps - 1, -1, -1))
        # Evenly spaced, always ending on t = 0 and starting at the noisiest step.
        idx = torch.linspace(self.steps - 1, 0, num).round().long().tolist()
        return list(dict.fromkeys(idx))
