"""A training batch: prompts, the code canvas, and which rows are unconditional."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """A training batch. ``uncond`` rows replace E(s) by Gaussian noise (pre-training task 1)."""

    prompt_ids: torch.Tensor  # [B, S]
    prompt_mask: torch.Tensor  # [B, S]
    code_ids: torch.Tensor  # [B, C] canvas: tokens, </s>, <pad>...
    uncond: torch.Tensor  # [B] bool

    FIELDS = ("prompt_ids", "prompt_mask", "code_ids", "uncond")

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(getattr(self, f).to(device, non_blocking=non_blocking) for f in self.FIELDS))

    def pin_memory(self) -> Batch:
        """Page-locked copies (the DataLoader's pin_memory thread calls this): a copy to the GPU
        with ``non_blocking=True`` then overlaps the step before it."""
        return Batch(*(getattr(self, f).pin_memory() for f in self.FIELDS))
