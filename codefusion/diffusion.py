"""The training objective: the paper's three loss terms on one batch.

    L_t = ||eps_hat - eps||^2  +  ||D(x0_hat) - L(y)||^2  -  log p_H(y | D(x0_hat))
          (noise error, N)        (decoder term, D and L)    (cross-entropy, H)

Notation: y the code tokens, x0 = L(y) [B, C, Dz], x_t = q_sample(x0, t, eps), N predicts
x0_hat, SNR(t) = alpha_bar_t / (1 - alpha_bar_t). The choices the paper leaves open are the
arguments of :class:`CodeFusionObjective`; each has the paper's literal reading and the recipe
the README's ablation chose on held-out data (the default):

- **Noise term** (``noise_weighting``): N predicts x0 (GENIE, Diffusion-LM); with eps derived
  from x0_hat, ||eps_hat - eps||^2 = SNR(t) * ||x0_hat - x0||^2, so the paper's literal term
  ("snr") puts most of its weight on the nearly clean steps (40% on t < 60 of 1200) and starves
  the noisy ones where sampling starts. "x0" weights every t alike (Diffusion-LM's
  simplification; the recipe).
- **What D reads** (``decoder_input``): at inference D runs once, on the x0_hat of the last
  step (t = 0), which for a good sample is close to L(y). The paper's literal reading ("x0_hat":
  D on N's estimate at the drawn t, mostly blurred) teaches D to ignore its input and generate
  from E(s) alone; "clean" (the recipe) trains D on L(y): D becomes the rounding step of GENIE
  and Diffusion-LM.
- **The lowest training noise** (``min_t``): t is drawn from [min_t T, T); 0 (the recipe) is
  every step. DINOISER's point: at the nearly clean steps x_t gives the answer away, and N
  learns to ignore the prompt there.
- **Self-conditioning** (model config ``self_condition``): with probability
  ``self_cond_prob`` per batch, N first estimates x0 without gradient and then reads that
  estimate as an extra input (Chen et al., Analog Bits); otherwise the extra input is zero.
  Sampling feeds each step's x0_hat to the next.
- Pad positions: most of the canvas is pad (CF gold is 3-10 tokens of 32-128), and weighting
  every position equally lets the model collapse to all-pad output (DiffuSeq #50,
  Diffusion-LM #48). Each term is a per-row mean over content positions (code tokens and the
  first end token, which decoding needs to stop) plus ``pad_weight`` times the mean over the
  remaining pad positions; rows are then averaged.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from codefusion.batch import Batch
from codefusion.kernels import linear_cross_entropy
from codefusion.model import CodeFusionModel, Prompt, attention_mask
from codefusion.schedule import SqrtSchedule
from codefusion.tokenizer import up_to_first_stop


def content_mask(code_ids: torch.Tensor, pad_id: int, eos_id: int) -> torch.Tensor:
    """[B, C] bool: positions up to and including the first end/pad token."""
    return up_to_first_stop(code_ids, (pad_id, eos_id))


def position_weights(
    code_ids: torch.Tensor, pad_id: int, eos_id: int, pad_weight: float
) -> torch.Tensor:
    """[B, C] weights: content (tokens + first end) sum to 1 per row, the rest to pad_weight."""
    content = content_mask(code_ids, pad_id, eos_id).float()
    rest = 1.0 - content
    w = content / content.sum(1, keepdim=True).clamp_min(1)
    return w + pad_weight * rest / rest.sum(1, keepdim=True).clamp_min(1)


# Noise-term weight on ||x0_hat - x0||^2 as a function of SNR(t) [B].
NOISE_WEIGHTINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "snr": lambda snr: snr,  # = ||eps_hat - eps||^2: the paper's literal noise error
    "x0": lambda snr: torch.ones_like(snr),
}
DECODER_INPUTS = ("x0_hat", "clean")


def predict_x0(
    model: CodeFusionModel,
    schedule: SqrtSchedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    kv: list,
    cross_mask: torch.Tensor | None,
    x0_prev: torch.Tensor | None = None,
    prompt: Prompt | None = None,
) -> torch.Tensor:
    """N's estimate of x0, whatever N's parametrisation (x0, tokens, or eps converted)."""
    out = model.denoise(x_t, t, kv, cross_mask, x0_prev, prompt)
    return schedule.x0_from_eps(x_t, t, out) if model.config.prediction == "eps" else out


class CodeFusionObjective(nn.Module):
    """Computes the loss terms of a batch for a model under a schedule (options: module doc).

    A module only so that the schedule's constants move with whatever holds it (the Lightning
    module); it has no parameters."""

    def __init__(
        self,
        schedule: SqrtSchedule,
        pad_weight: float = 1.0,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        noise_weighting: str = "x0",
        decoder_input: str = "clean",
        self_cond_prob: float = 0.5,
        min_t: float = 0.0,
    ) -> None:
        if noise_weighting not in NOISE_WEIGHTINGS:
            raise ValueError(
                f"noise_weighting must be one of {', '.join(NOISE_WEIGHTINGS)}, "
                f"not {noise_weighting!r}"
            )
        if decoder_input not in DECODER_INPUTS:
            raise ValueError(
                f"decoder_input must be one of {', '.join(DECODER_INPUTS)}, not {decoder_input!r}"
            )
        super().__init__()
        self.schedule, self.pad_weight, self.weights = schedule, pad_weight, weights
        self.noise_weight = NOISE_WEIGHTINGS[noise_weighting]
        self.decoder_input, self.self_cond_prob = decoder_input, self_cond_prob
        if not 0.0 <= min_t < 1.0:
            raise ValueError(f"min_t must lie in [0, 1), not {min_t}")
        self.t_low = int(min_t * schedule.steps)

    def encoder_states(
        self, model: CodeFusionModel, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """E(s), with Gaussian noise in place of it (and nothing masked) for unconditional rows.

        ``torch.where`` on every batch, not ``if u.any()``: a branch on a device tensor would
        synchronise with the GPU at every step."""
        enc = model.encode(batch.prompt_ids, batch.prompt_mask)
        u = batch.uncond
        enc = torch.where(u[:, None, None], torch.randn_like(enc), enc)
        mask = torch.where(u[:, None], torch.ones_like(batch.prompt_mask), batch.prompt_mask)
        return enc, attention_mask(mask)

    def cross_entropy(
        self, model: CodeFusionModel, h: torch.Tensor, batch: Batch, enc: torch.Tensor, w
    ) -> torch.Tensor:
        """-sum_positions w log p(y) of H (and the pointer, when the model copies). Without a
        pointer a fused kernel on CUDA that never holds [B*C, V] fp32 logits."""
        y = batch.code_ids
        if model.copy is None:
            return linear_cross_entropy(
                h.flatten(0, 1), model.head.weight, model.head.bias, y.flatten(), w.flatten()
            )
        logp_y = F.log_softmax(model.logits(h).float(), -1).gather(-1, y[..., None])[..., 0]
        prompt = Prompt(enc, batch.prompt_mask.bool(), batch.prompt_ids)
        return -(model.copy.target_logprob(logp_y, h, prompt, y) * w).sum()

    def forward(
        self, model: CodeFusionModel, batch: Batch, with_accuracy: bool = False
    ) -> dict[str, torch.Tensor]:
        """Loss terms (and optionally the token accuracy of argmax H on content positions)."""
        cfg, sched = model.config, self.schedule
        enc, cross_mask = self.encoder_states(model, batch)
        kv_n, kv_d = model.cross_kv(enc)

        x0 = model.embed_code(batch.code_ids)  # L(y)  [B, C, Dz]
        t = torch.randint(self.t_low, sched.steps, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        x_t = sched.q_sample(x0, t, eps)

        # Self-conditioning input: zeros, or with probability self_cond_prob N's own first
        # estimate. Always a tensor: a compiled N sees one input signature either way. The coin
        # is host-side (Python's RNG, saved in checkpoints): no device sync. Under DDP the ranks
        # may differ; every parameter of N gets a gradient either way.
        # The pointer reads the real prompt (an unconditional row's is just </s>).
        prompt = Prompt(enc, batch.prompt_mask.bool(), batch.prompt_ids)
        x0_prev = torch.zeros_like(x0) if cfg.self_condition else None
        if cfg.self_condition and random.random() < self.self_cond_prob:
            with torch.no_grad():
                x0_prev = predict_x0(model, sched, x_t, t, kv_n, cross_mask, x0_prev, prompt)
            x0_prev = x0_prev.detach().to(x0.dtype)  # autocast's bf16 as the zeros' dtype
        logp_n = None
        if cfg.prediction == "tokens":  # N's distribution over tokens, trained by its own CE
            x0_hat, logp_n = model.denoise(x_t, t, kv_n, cross_mask, x0_prev, prompt, True)
        else:
            x0_hat = predict_x0(model, sched, x_t, t, kv_n, cross_mask, x0_prev)  # N
        h = model.decode(x0 if self.decoder_input == "clean" else x0_hat, kv_d, cross_mask)  # D

        w = position_weights(batch.code_ids, cfg.pad_id, cfg.eos_id, self.pad_weight)
        rows = x0.shape[0]
        x0_err = (x0_hat - x0).float().pow(2).mean(-1)  # [B, C]
        noise = (self.noise_weight(sched.snr(t))[:, None] * x0_err * w).sum() / rows
        decoder = ((h - x0).float().pow(2).mean(-1) * w).sum() / rows
        ce = self.cross_entropy(model, h, batch, enc, w) / rows  # H (+ the pointer)
        if logp_n is not None:  # CDCD: N's token distribution is scored like H's
            noise = noise - (logp_n.gather(-1, batch.code_ids[..., None])[..., 0] * w).sum() / rows
        a, b, c = self.weights
        out = {
            "noise": noise,
            "decoder": decoder,
            "ce": ce,
            "loss": a * noise + b * decoder + c * ce,
        }
        if with_accuracy:
            with torch.no_grad():
                content = content_mask(batch.code_ids, cfg.pad_id, cfg.eos_id)
                prompt = Prompt(enc, batch.prompt_mask.bool(), batch.prompt_ids)
                tokens = model.token_logprobs(h, prompt).argmax(-1)
                hits = (tokens == batch.code_ids) & content
                out["token_acc"] = hits.sum() / content.sum().clamp_min(1)
        return out
