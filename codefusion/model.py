"""The CodeFusion network, named as in the paper's figure.

    E  encoder        T5 encoder over the prompt                     [B, S] -> [B, S, De]
    L  code embedding token ids -> diffusion space                   [B, C] -> [B, C, Dz]
    N  denoiser       10 layers: self-attn over x_t, cross-attn to E, timestep-conditioned
                      (adaLN-single: one timestep MLP, a learned per-layer offset)
                                                                     [B, C, Dz] -> [B, C, Dz]
    D  decoder        6 layers, same attention pattern, runs once on the denoised x0
    H  head           linear to the vocabulary, argmax per position

Attention goes through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on
GPU). Cross-attention keys/values depend only on E's output, so ``cross_kv`` computes them once
per prompt, and every draw of the prompt and every denoising step reuses them (see
codefusion/sampling). Model FLOPs are counted in ``codefusion/flops.py``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import T5Config, T5EncoderModel

from codefusion.config import CodeFusionConfig
from codefusion.kernels import modulated_layer_norm

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [B, heads, S, head_dim]


class Attention(nn.Module):
    """Multi-head attention; keys/values may come from another sequence (cross-attention)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def kv(self, source: torch.Tensor) -> KV:
        b, s, _ = source.shape
        k, v = self.kv_proj(source).view(b, s, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        kv: KV | None = None,
        mask: torch.Tensor | None = None,  # [B or rows of kv, 1, 1, S] bool, True = attend
    ) -> torch.Tensor:
        b, n, d = x.shape
        k, v = self.kv(x) if kv is None else kv
        # Cross-attention K/V may hold one row per prompt while x holds every draw of it
        # (b = prompts x draws, a prompt's draws consecutive): each query attends on its own,
        # so a prompt's draws fold into one long query sequence and K/V are never repeated.
        rows = k.shape[0]
        q = self.q(x).view(rows, b // rows * n, self.heads, -1).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


def mlp(dim: int, mult: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, mult * dim),
        nn.GELU(approximate="tanh"),
        nn.Dropout(dropout),
        nn.Linear(mult * dim, dim),
    )


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention to E, MLP.

    With ``cond`` ([B, 9, dim] modulation) the three norms are timestep-modulated and each
    residual branch is gated (the denoiser N); without it this is a plain block (the decoder D).
    """

    def __init__(self, cfg: CodeFusionConfig, kv_dim: int, conditioned: bool):
        super().__init__()
        d = cfg.hidden_dim
        self.norms = nn.ModuleList(
            nn.LayerNorm(d, elementwise_affine=not conditioned) for _ in range(3)
        )
        self.self_attn = Attention(d, cfg.heads, dropout=cfg.dropout)
        self.cross_attn = Attention(d, cfg.heads, kv_dim=kv_dim, dropout=cfg.dropout)
        self.mlp = mlp(d, cfg.ff_mult, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        # Per-layer offset of the shared timestep modulation (PixArt's adaLN-single).
        self.mod_offset = nn.Parameter(torch.zeros(9, d)) if conditioned else None

    def forward(
        self,
        x: torch.Tensor,
        cross_kv: KV,
        cross_mask: torch.Tensor | None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        branches = (
            lambda h: self.self_attn(h),
            lambda h: self.cross_attn(h, kv=cross_kv, mask=cross_mask),
            self.mlp,
        )
        if cond is None:
            for norm, f in zip(self.norms, branches, strict=True):
                x = x + self.drop(f(norm(x)))
            return x
        mods = (cond + self.mod_offset).unbind(1)  # 9 x [B, d]
        for i, (norm, f) in enumerate(zip(self.norms, branches, strict=True)):
            shift, scale, gate = mods[3 * i : 3 * i + 3]
            # adaLN: LayerNorm(x) * (1 + scale) + shift, one fused Triton pass on CUDA.
            h = modulated_layer_norm(x, shift, scale, norm.eps)
            x = x + (1 + gate.unsqueeze(1)) * self.drop(f(h))
        return x


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Prompt(NamedTuple):
    """The prompt as the copy head reads it: E(s), its padding mask and its token ids, one row
    per prompt (a prompt's draws share them, as they share the cross-attention K/V)."""

    enc: torch.Tensor  # [P, S, De]
    mask: torch.Tensor  # [P, S] bool: True = a token
    ids: torch.Tensor  # [P, S] int64


class CopyHead(nn.Module):
    """A pointer over the prompt's tokens, mixed with H's distribution by a learnt gate per
    position (pointer-generator, See et al. 2017; CopyNet's idea):

        p(v) = g p_H(v) + (1 - g) sum_s a_s [s's token = v],   a = softmax_s(q(h) . k(E(s)_s))

    so a literal of the prompt (the same token ids in prompt and code: the ``literal``
    tokenizer) can be copied whatever H has learnt of it."""

    def __init__(self, in_dim: int, enc_dim: int, dim: int = 64):
        super().__init__()
        self.q = nn.Linear(in_dim, dim)
        self.k = nn.Linear(enc_dim, dim)
        self.gate = nn.Linear(in_dim, 1)
        nn.init.constant_(self.gate.bias, 2.0)  # start mostly generating: p_H dominates

    def attend(self, h: torch.Tensor, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
        """(log a [B, C, S] over prompt positions, log g [B, C, 1]); B = P x draws rows."""
        b, c, _ = h.shape
        rows = prompt.enc.shape[0]
        q = self.q(h).view(rows, b // rows * c, -1)  # a prompt's draws fold into its queries
        k = self.k(prompt.enc)
        scores = (q @ k.transpose(1, 2)).float() / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~prompt.mask[:, None, :], -torch.inf)
        log_a = F.log_softmax(scores, dim=-1).view(b, c, -1)
        return log_a, F.logsigmoid(self.gate(h).float())

    def mix(self, logp_vocab: torch.Tensor, h: torch.Tensor, prompt: Prompt) -> torch.Tensor:
        """log p(v) for every v: [B, C, V] (the decode step: H's and the pointer's mixed)."""
        log_a, log_g = self.attend(h, prompt)
        b, c, s = log_a.shape
        rows = prompt.ids.shape[0]
        index = prompt.ids.repeat_interleave(b // rows, 0)[:, None, :].expand(b, c, s)
        copy = torch.zeros_like(logp_vocab).scatter_add_(-1, index, log_a.exp())
        log_not_g = torch.log1p(-log_g.exp().clamp(max=1 - 1e-6))
        return torch.logaddexp(log_g + logp_vocab, log_not_g + copy.clamp_min(1e-30).log())

    def target_logprob(
        self, logp_vocab_y: torch.Tensor, h: torch.Tensor, prompt: Prompt, y: torch.Tensor
    ) -> torch.Tensor:
        """log p(y) at the targets y [B, C] (training: no [B, C, V] copy table needed)."""
        log_a, log_g = self.attend(h, prompt)
        rows = prompt.ids.shape[0]
        ids = prompt.ids.repeat_interleave(y.shape[0] // rows, 0)
        hit = ids[:, None, :] == y[:, :, None]  # [B, C, S]
        # In probability space: a target found nowhere in the prompt copies with p = 0, and
        # log(0 + tiny) keeps the gradients finite (a logsumexp over nothing would not).
        log_copy = (log_a.exp() * hit).sum(-1).clamp_min(1e-30).log()
        log_not_g = torch.log1p(-log_g.exp().clamp(max=1 - 1e-6))
        return torch.logaddexp(log_g[..., 0] + logp_vocab_y, log_not_g[..., 0] + log_copy)


class Stack(nn.Module):
    """A stack of blocks between the latent space and the hidden width (used by N and D)."""

    def __init__(
        self, cfg: CodeFusionConfig, kv_dim: int, layers: int, conditioned: bool, in_dim: int
    ):
        super().__init__()
        d = cfg.hidden_dim
        self.in_proj = nn.Linear(in_dim, d)
        self.pos = nn.Parameter(torch.randn(cfg.code_len, d) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg, kv_dim, conditioned) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, cfg.latent_dim)

    def cross_kv(self, enc: torch.Tensor) -> list[KV]:
        """Each layer's cross-attention keys/values of E's output: computed once per prompt."""
        return [blk.cross_attn.kv(enc) for blk in self.blocks]

    def run(
        self,
        z: torch.Tensor,
        cross_kv: list[KV],
        cross_mask: torch.Tensor | None,
        cond: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,  # [B, d] added to every position
    ) -> torch.Tensor:
        x = self.in_proj(z) + self.pos[: z.shape[1]]
        if bias is not None:
            x = x + bias.unsqueeze(1)
        for blk, kv in zip(self.blocks, cross_kv, strict=True):
            x = blk(x, kv, cross_mask, cond)
        return self.out_proj(self.norm(x))


class Denoiser(Stack):
    """N: predicts the clean embedding x0 from x_t, the timestep and the prompt encoding.

    With ``self_condition`` N also reads its previous estimate of x0 (zeros when there is none),
    concatenated to x_t along the latent dim: [B, C, 2 Dz] -> in_proj. With ``prediction:
    tokens`` N predicts a distribution over tokens at each position (its own vocabulary head,
    and a pointer over the prompt when the model copies) and x0 = sum_v p(v) L(v), CDCD's score
    interpolation: a copied token steers every denoising step.
    """

    def __init__(self, cfg: CodeFusionConfig, kv_dim: int):
        in_dim = cfg.latent_dim * (2 if cfg.self_condition else 1)
        super().__init__(cfg, kv_dim, cfg.denoiser_layers, conditioned=True, in_dim=in_dim)
        self.self_condition = cfg.self_condition
        tokens = cfg.prediction == "tokens"
        self.token_head = nn.Linear(cfg.latent_dim, cfg.vocab_size) if tokens else None
        self.copy = CopyHead(cfg.latent_dim, kv_dim) if tokens and cfg.copy else None
        d = cfg.hidden_dim
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.time_mod = nn.Sequential(nn.SiLU(), nn.Linear(d, 9 * d))
        nn.init.zeros_(self.time_mod[1].weight)  # start as a plain transformer
        nn.init.zeros_(self.time_mod[1].bias)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cross_kv: list[KV],
        cross_mask: torch.Tensor | None,
        x0_prev: torch.Tensor | None = None,  # [B, C, Dz] self-conditioning input
        prompt: Prompt | None = None,  # prediction tokens with a pointer: what it copies from
        table: torch.Tensor | None = None,  # prediction tokens: L of every token [V, Dz]
        return_logp: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.self_condition:
            x_t = torch.cat([x_t, torch.zeros_like(x_t) if x0_prev is None else x0_prev], -1)
        # N's own dtype for its inputs: a no-op for the fp32 model (autocast casts in training);
        # the CUDA-graph sampler runs a bf16 copy of N on fp32 latents (sampling/graph.py).
        dtype = self.in_proj.weight.dtype
        x_t = x_t.to(dtype)
        temb = self.time_mlp(timestep_embedding(t, self.in_proj.out_features).to(dtype))  # [B, d]
        cond = self.time_mod(temb).view(t.shape[0], 9, -1)
        # The timestep enters twice: added to every position, and through adaLN modulation.
        out = self.run(x_t, cross_kv, cross_mask, cond=cond, bias=temb)
        if self.token_head is None:
            return out
        logp = F.log_softmax(self.token_head(out).float(), dim=-1)  # [B, C, V]
        if self.copy is not None:
            logp = self.copy.mix(logp, out, prompt)
        x0 = logp.exp().to(table.dtype) @ table  # E_p[L(v)]
        return (x0, logp) if return_logp else x0


class Decoder(Stack):
    """D: maps the denoised x0 to a representation that H can read (run once per sample)."""

    def __init__(self, cfg: CodeFusionConfig, kv_dim: int):
        super().__init__(cfg, kv_dim, cfg.decoder_layers, conditioned=False, in_dim=cfg.latent_dim)

    def forward(
        self, x0: torch.Tensor, cross_kv: list[KV], cross_mask: torch.Tensor | None
    ) -> torch.Tensor:
        return self.run(x0, cross_kv, cross_mask)


def encoder_config(cfg: CodeFusionConfig) -> T5Config:
    if cfg.encoder is not None:
        return T5Config.from_dict(cfg.encoder)
    return T5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.encoder_dim,
        d_kv=cfg.encoder_dim // cfg.encoder_heads,
        d_ff=cfg.encoder_ff,
        num_layers=cfg.encoder_layers,
        num_heads=cfg.encoder_heads,
        dropout_rate=cfg.dropout,
        feed_forward_proj="relu",
        pad_token_id=cfg.pad_id,
        eos_token_id=cfg.eos_id,
        is_encoder_decoder=False,
        use_cache=False,
    )


class CodeFusionModel(nn.Module):
    """E, N, D, H and L together. The diffusion schedule and the loss live elsewhere."""

    def __init__(self, cfg: CodeFusionConfig, encoder: T5EncoderModel | None = None):
        super().__init__()
        self.config = cfg
        self.encoder = encoder if encoder is not None else T5EncoderModel(encoder_config(cfg))  # E
        kv_dim = self.encoder.config.d_model
        self.denoiser = Denoiser(cfg, kv_dim)  # N
        self.decoder = Decoder(cfg, kv_dim)  # D
        self.head = nn.Linear(cfg.latent_dim, cfg.vocab_size)  # H
        self.copy = CopyHead(cfg.latent_dim, kv_dim) if cfg.copy else None  # H's pointer
        self.code_embedding = nn.Embedding(cfg.vocab_size, cfg.latent_dim)  # L
        nn.init.normal_(
            self.code_embedding.weight, std=cfg.embedding_init_std or cfg.latent_dim**-0.5
        )

    @property
    def encoder_dim(self) -> int:
        return self.encoder.config.d_model

    # --- the five pieces -------------------------------------------------------------------
    def encode(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """E(s): [B, S] -> [B, S, De]."""
        return self.encoder(input_ids=prompt_ids, attention_mask=prompt_mask).last_hidden_state

    def embed_code(self, code_ids: torch.Tensor) -> torch.Tensor:
        """L(y): token ids -> points on the sphere of radius sqrt(Dz).

        Normalising fixes the signal scale against the unit-variance noise: a free embedding
        can shrink towards zero, where every diffusion loss term becomes trivially small.
        """
        e = self.code_embedding(code_ids)
        return F.normalize(e, dim=-1) * math.sqrt(e.shape[-1])

    def code_table(self) -> torch.Tensor:
        """L of every token: [V, Dz] (what clamping and the diagnostics compare against)."""
        return self.embed_code(torch.arange(self.config.vocab_size, device=self.head.weight.device))

    def cross_kv(self, enc: torch.Tensor) -> tuple[list[KV], list[KV]]:
        """Cross-attention keys/values of E's output for N and for D: once per prompt (the
        draws of a prompt share them, see :class:`Attention`)."""
        return self.denoiser.cross_kv(enc), self.decoder.cross_kv(enc)

    def denoise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        kv: list[KV],
        cross_mask: torch.Tensor | None,
        x0_prev: torch.Tensor | None = None,
        prompt: Prompt | None = None,
        return_logp: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """N(x_t, t, E(s) [, previous x0_hat]) -> x0_hat (or eps_hat, see ``prediction``; with
        ``prediction: tokens`` x0_hat = E_p[L], and with ``return_logp`` also log p [B, C, V])."""
        if self.denoiser.token_head is None:
            return self.denoiser(x_t, t, kv, cross_mask, x0_prev)
        return self.denoiser(
            x_t, t, kv, cross_mask, x0_prev, prompt, self.code_table(), return_logp
        )

    def decode(
        self, x0: torch.Tensor, kv: list[KV], cross_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """D(x0_hat, E(s)) -> [B, C, Dz]."""
        return self.decoder(x0, kv, cross_mask)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """H: [B, C, Dz] -> [B, C, V] (the vocabulary's logits, the pointer aside)."""
        return self.head(h)

    def token_logprobs(self, h: torch.Tensor, prompt: Prompt | None = None) -> torch.Tensor:
        """log p(token) at every position [B, C, V]: H's, mixed with the pointer over the
        prompt when the model copies (``prompt`` then required)."""
        logp = F.log_softmax(self.logits(h).float(), dim=-1)
        if self.copy is None:
            return logp
        return self.copy.mix(logp, h, prompt)

    def parameter_counts(self) -> dict[str, int]:
        parts = {
            "encoder E": self.encoder,
            "denoiser N": self.denoiser,
            "decoder D": self.decoder,
            "head H": self.head,
            "embedding L": self.code_embedding,
        }
        if self.copy is not None:
            parts["copy head"] = self.copy
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        counts["total"] = sum(counts.values())
        return counts


def attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, S] padding mask (1 = token) -> [B, 1, 1, S] boolean mask for SDPA."""
    return mask.bool()[:, None, None, :]
