"""Why a CodeFusion model generates well or badly: diagnostics of its pieces on real code.

A model can score well on its own loss and still generate badly. These numbers, on a batch of
held-out (prompt, code) pairs, say where:

- ``decoder_clean_acc``: token accuracy of D+H on the *clean* L(y). Sampling ends with D on an
  x0_hat that, for a good sample, is close to L(y); a D that is wrong here cannot round a good
  sample into the right tokens (a D trained only on blurred x0_hat learns to ignore its input).
- ``x0_nn_acc@t``: token accuracy of the nearest L row to N's x0_hat at step t (x_t from the
  forward process of the gold code). High at small t and falling with t is a healthy N; the
  steps where it collapses are the steps sampling cannot get right.

Generation diagnostics (length accuracy of samples, valid top-1) need a benchmark's scoring
and live in ``codefusion/scoring/evaluate.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from codefusion.batch import Batch
from codefusion.diffusion import content_mask, predict_x0
from codefusion.model import CodeFusionModel, Prompt, attention_mask
from codefusion.schedule import SqrtSchedule

if TYPE_CHECKING:
    from codefusion.data import Example

# Steps at which x0_nn_acc is reported by default (of T = 1200; scaled for other T).
DEFAULT_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def default_steps(schedule: SqrtSchedule) -> list[int]:
    return sorted({round(f * (schedule.steps - 1)) for f in DEFAULT_FRACTIONS})


@torch.no_grad()
def model_diagnostics(
    model: CodeFusionModel,
    schedule: SqrtSchedule,
    batch: Batch,
    steps: list[int] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """The diagnostics above on one batch (conditional rows; ``uncond`` is ignored)."""
    cfg = model.config
    steps = default_steps(schedule) if steps is None else steps
    enc = model.encode(batch.prompt_ids, batch.prompt_mask)
    cross_mask = attention_mask(batch.prompt_mask)
    kv_n, kv_d = model.cross_kv(enc)
    content = content_mask(batch.code_ids, cfg.pad_id, cfg.eos_id)
    n_content = content.sum().clamp_min(1)

    def acc(tokens: torch.Tensor) -> float:
        return float(((tokens == batch.code_ids) & content).sum() / n_content)

    x0 = model.embed_code(batch.code_ids)
    prompt = Prompt(enc, batch.prompt_mask.bool(), batch.prompt_ids)
    h = model.decode(x0, kv_d, cross_mask)
    out = {"decoder_clean_acc": acc(model.token_logprobs(h, prompt).argmax(-1))}
    table = model.code_table()  # [V, Dz]
    for t in steps:
        tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = schedule.q_sample(x0, tt, eps)
        # As in sampling: a self-conditioned N reads zeros, then its own estimate.
        zeros = torch.zeros_like(x0) if cfg.self_condition else None
        x0_hat = predict_x0(model, schedule, x_t, tt, kv_n, cross_mask, zeros, prompt)
        if cfg.self_condition:
            x0_hat = predict_x0(model, schedule, x_t, tt, kv_n, cross_mask, x0_hat, prompt)
        out[f"x0_nn_acc@{t}"] = acc((x0_hat @ table.T).argmax(-1))
    return out


def model_diagnostics_on(
    generator: Any, examples: Sequence[Example], batch_size: int = 64, seed: int = 0
) -> dict[str, float]:
    """:func:`model_diagnostics` averaged over ``examples`` (a CodeFusion generator)."""
    cfg, tok = generator.config, generator.tokenizer
    gen = torch.Generator(device=generator.device).manual_seed(seed)
    sums: dict[str, float] = {}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids, mask, _ = tok.encode_prompts([e.prompt for e in chunk], cfg.max_prompt_len)
        code, _ = tok.encode_code([e.code for e in chunk], cfg.code_len)
        batch = Batch(ids, mask, code, torch.zeros(len(chunk), dtype=torch.bool)).to(
            generator.device
        )
        d = model_diagnostics(generator.model, generator.schedule, batch, generator=gen)
        for key, v in d.items():
            sums[key] = sums.get(key, 0.0) + v * len(chunk)
    return {key: v / max(1, len(examples)) for key, v in sums.items()}
