"""The training objective: the paper's three loss terms on one batch.

    L_t = ||eps_hat - eps||^2  +  ||D(x0_hat) - L(y)||^2  -  log p_H(y | D(x0_hat))
          (noise error, N)        (decoder term, D and L)    (cross-entropy, H)

Choices the paper leaves open [ours, see README]:
- N predicts x0 (GENIE, Diffusion-LM) and ``eps_hat`` is derived from it, so the first term is
  the paper's noise error while ``x0_hat`` stays well conditioned at the noisiest steps, where
  dividing by sqrt(alpha_bar) ~ 3e-3 would amplify any eps error. ``prediction="eps"`` keeps the
  literal parametrisation.
- Pad positions: most of the canvas is pad (CF gold is 3-10 tokens of 32-128), and weighting
  every position equally lets the model collapse to all-pad output (DiffuSeq #50,
  Diffusion-LM #48). Each term is a per-row mean over content positions (code tokens and the
  first end token, which decoding needs to stop) plus ``pad_weight`` times the mean over the
  remaining pad positions; rows are then averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codefusion.kernels import linear_cross_entropy
from codefusion.model import CodeFusionModel, attention_mask
from codefusion.schedule import SqrtSchedule


@dataclass
class Batch:
    """A training batch. ``uncond`` rows replace E(s) by Gaussian noise (pre-training task 1)."""

    prompt_ids: torch.Tensor  # [B, S]
    prompt_mask: torch.Tensor  # [B, S]
    code_ids: torch.Tensor  # [B, C] canvas: tokens, </s>, <pad>...
    uncond: torch.Tensor  # [B] bool

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(
                getattr(self, f).to(device)
                for f in ("prompt_ids", "prompt_mask", "code_ids", "uncond")
            )
        )


def content_mask(code_ids: torch.Tensor, pad_id: int, eos_id: int) -> torch.Tensor:
    """[B, C] bool: positions up to and including the first end/pad token."""
    is_end = ((code_ids == pad_id) | (code_ids == eos_id)).long()
    return (torch.cumsum(is_end, dim=1) - is_end) == 0


def position_weights(
    code_ids: torch.Tensor, pad_id: int, eos_id: int, pad_weight: float
) -> torch.Tensor:
    """[B, C] weights: content (tokens + first end) sum to 1 per row, the rest to pad_weight."""
    content = content_mask(code_ids, pad_id, eos_id).float()
    rest = 1.0 - content
    w = content / content.sum(1, keepdim=True).clamp_min(1)
    return w + pad_weight * rest / rest.sum(1, keepdim=True).clamp_min(1)


class CodeFusionObjective:
    """Computes the loss terms of a batch for a model under a schedule."""

    def __init__(
        self,
        schedule: SqrtSchedule,
        pad_weight: float = 1.0,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        self.schedule, self.pad_weight, self.weights = schedule, pad_weight, weights

    def encoder_states(
        self, model: CodeFusionModel, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """E(s), with Gaussian noise in place of it (and nothing masked) for unconditional rows."""
        enc = model.encode(batch.prompt_ids, batch.prompt_mask)
        u = batch.uncond
        if bool(u.any()):
            enc = torch.where(u[:, None, None], torch.randn_like(enc), enc)
            mask = torch.where(u[:, None], torch.ones_like(batch.prompt_mask), batch.prompt_mask)
        else:
            mask = batch.prompt_mask
        return enc, attention_mask(mask)

    def __call__(
        self, model: CodeFusionModel, batch: Batch, with_accuracy: bool = False
    ) -> dict[str, torch.Tensor]:
        """Loss terms (and optionally the token accuracy of argmax H on content positions)."""
        cfg, sched = model.config, self.schedule
        enc, cross_mask = self.encoder_states(model, batch)
        kv_n, kv_d = model.cross_kv(enc)

        x0 = model.embed_code(batch.code_ids)  # L(y)  [B, C, Dz]
        t = torch.randint(0, sched.steps, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        x_t = sched.q_sample(x0, t, eps)

        out = model.denoise(x_t, t, kv_n, cross_mask)  # N
        if cfg.prediction == "x0":
            x0_hat, eps_hat = out, sched.eps_from_x0(x_t, t, out)
        else:
            eps_hat, x0_hat = out, sched.x0_from_eps(x_t, t, out)
        h = model.decode(x0_hat, kv_d, cross_mask)  # D

        w = position_weights(batch.code_ids, cfg.pad_id, cfg.eos_id, self.pad_weight)
        rows = x0.shape[0]
        noise = ((eps_hat - eps).float().pow(2).mean(-1) * w).sum() / rows
        decoder = ((h - x0).float().pow(2).mean(-1) * w).sum() / rows
        # H + cross-entropy; on CUDA a fused kernel that never holds [B*C, V] fp32 logits.
        head = model.head
        ce = linear_cross_entropy(
            h.flatten(0, 1), head.weight, head.bias, batch.code_ids.flatten(), w.flatten()
        )
        ce = ce / rows
        a, b, c = self.weights
        out = {
            "loss": a * noise + b * decoder + c * ce,
            "noise": noise,
            "decoder": decoder,
            "ce": ce,
        }
        if with_accuracy:
            with torch.no_grad():
                content = content_mask(batch.code_ids, cfg.pad_id, cfg.eos_id)
                hits = (model.logits(h).argmax(-1) == batch.code_ids) & content
                out["token_acc"] = hits.sum() / content.sum().clamp_min(1)
        return out
