"""Model FLOPs of one training step, analytic (as nanoGPT's ``estimate_mfu``), for each
architecture; checked against ``torch.utils.flop_counter`` in the tests.

Forward: 2 x (weights of every ``nn.Linear``) x (tokens that linear sees: prompt tokens for the
encoder and the cross-attention K/V projections, code tokens for the rest, one row per example
for CodeFusion's timestep MLPs), plus the attention matmuls (QK^T and AV: 4 x B x Sq x Sk x
width per layer). A training step (forward + backward) is 3 x the forward, plus CodeFusion's
self-conditioning first pass through N (forward only) on the share of batches that take it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn


def linear_weights(module: nn.Module, keep: Callable[[str], bool] = lambda n: True) -> int:
    """Weights of the ``nn.Linear`` layers of ``module`` whose names ``keep`` accepts."""
    return sum(
        m.weight.numel() for n, m in module.named_modules() if isinstance(m, nn.Linear) and keep(n)
    )


def codefusion_flops(
    model: nn.Module, batch_size: int, prompt_len: int, self_cond_prob: float = 0.5
) -> dict[str, Any]:
    """A CodeFusionModel's step on ``batch_size`` rows of ``prompt_len`` prompt tokens and a
    full canvas: ``forward``, ``train_step`` and the linear weights per prompt token, code token
    and example."""
    cfg = model.config
    b, s, c = batch_size, prompt_len, cfg.code_len

    def kv(n: str) -> bool:
        return n.endswith("cross_attn.kv_proj")

    def timestep(n: str) -> bool:
        return n.startswith(("time_mlp", "time_mod"))

    def per_code(n: str) -> bool:
        return not kv(n) and not timestep(n)

    stacks = (model.denoiser, model.decoder)
    per_prompt_token = linear_weights(model.encoder) + sum(linear_weights(m, kv) for m in stacks)
    per_example = linear_weights(model.denoiser, timestep)
    head = cfg.vocab_size * cfg.latent_dim  # H: a [V, Dz] matmul per code token
    per_code_token = head + sum(linear_weights(m, per_code) for m in stacks)
    matmul = 2 * (per_prompt_token * b * s + per_code_token * b * c + per_example * b)
    enc = model.encoder.config
    d = cfg.hidden_dim
    layer_attention = 4 * b * c * c * d + 4 * b * c * s * d
    attention = (
        4 * b * s * s * enc.num_heads * enc.d_kv * enc.num_layers
        + (cfg.denoiser_layers + cfg.decoder_layers) * layer_attention
    )
    forward = matmul + attention
    # Self-conditioning's first pass through N alone (forward only, K/V reused).
    first_pass = (
        2 * (linear_weights(model.denoiser, per_code) * b * c + per_example * b)
        + cfg.denoiser_layers * layer_attention
    )
    # The masked model (codefusion/masked.py) has the same stacks, no timestep MLPs and no
    # self-conditioning: the same count holds for it.
    extra = self_cond_prob * first_pass if getattr(cfg, "self_condition", False) else 0.0
    return {
        "forward": float(forward),
        "train_step": float(3 * forward + extra),
        "matmul_weights": {
            "per_prompt_token": per_prompt_token,
            "per_code_token": per_code_token,
            "per_example": per_example,
        },
    }


def t5_flops(model: nn.Module, batch_size: int, prompt_len: int) -> dict[str, Any]:
    """A T5 baseline's (``T5ForConditionalGeneration``) step on ``batch_size`` rows of
    ``prompt_len`` prompt tokens and a full ``code_len`` target, counted as CodeFusion's: prompt
    tokens for the encoder and the decoder's cross-attention K/V projections, target tokens for
    the rest and the tied LM head."""
    cfg = model.config
    b, s, c = batch_size, prompt_len, int(cfg.code_len)

    def cross_kv(name: str) -> bool:
        return name.endswith(("EncDecAttention.k", "EncDecAttention.v"))

    per_prompt_token = linear_weights(model.encoder) + linear_weights(model.decoder, cross_kv)
    per_code_token = linear_weights(model.decoder, lambda n: not cross_kv(n))
    per_code_token += cfg.vocab_size * cfg.d_model  # the LM head (tied: the shared table)
    inner = cfg.num_heads * cfg.d_kv
    attention = 4 * b * s * s * inner * cfg.num_layers + cfg.num_decoder_layers * (
        4 * b * c * c * inner + 4 * b * c * s * inner
    )
    forward = 2 * (per_prompt_token * b * s + per_code_token * b * c) + attention
    return {"forward": float(forward), "train_step": float(3 * forward)}


def train_step_flops(model: nn.Module, batch_size: int, prompt_len: int) -> float:
    """FLOPs of one training step of any architecture (CodeFusion, masked, T5)."""
    if hasattr(model, "denoiser"):
        return codefusion_flops(model, batch_size, prompt_len)["train_step"]
    return t5_flops(model, batch_size, prompt_len)["train_step"]


def mfu(flops: float, step_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation of a step of ``flops`` that took ``step_s`` seconds, against a
    device's peak FLOP/s (see ``bench/report.py``: dense bf16 peaks by device)."""
    return flops / step_s / peak_flops
