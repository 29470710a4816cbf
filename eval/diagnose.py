"""Diagnostics of a model on (prompt, code) pairs: generation quality and, for CodeFusion, its
pieces (``codefusion.diagnostics``).

Generation diagnostics (any generator): top-1/3/5 with the benchmark's own scoring, syntactic
validity of the top-1, unique@k, and length accuracy: the share of returned candidates (and of
top-1s) whose token count equals the gold code's. Used at validation during training (on the
held-out share of the training data) and by ``python -m eval diagnose``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from codefusion.data import Example
from eval.harness import generate_all, score
from eval.scoring import SCORING


def generation_diagnostics(
    generator: Any,
    examples: Sequence[Example],
    lang: str,
    k: int = 5,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
    **options: Any,
) -> dict[str, float]:
    """Top-k accuracy, valid top-1, unique@k and length accuracy of ``generator``'s top-k."""
    cands = generate_all(
        generator,
        examples,
        k=k,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        **options,
    )
    _, metrics = score(SCORING[lang], examples, cands)
    return {
        "top1": metrics["top1"],
        "top3": metrics["top3"],
        "top5": metrics["top5"],
        "valid_top1": metrics["valid_top1"],
        "unique@k": metrics["diversity"]["unique@k"],
        **length_accuracy(generator.tokenizer, examples, cands),
    }


def length_accuracy(
    tokenizer: Any, examples: Sequence[Example], candidates: Sequence[Sequence[Any]]
) -> dict[str, float]:
    """Share (%) of candidates, and of top-1s, with as many tokens as the gold code."""
    same, firsts, total = 0, 0, 0
    for ex, cs in zip(examples, candidates, strict=True):
        gold = len(tokenizer.ids(ex.code))
        lens = [len(tokenizer.ids(c.code)) for c in cs]
        same += sum(n == gold for n in lens)
        total += len(lens)
        firsts += bool(lens) and lens[0] == gold
    return {
        "length_acc": 100 * same / max(1, total),
        "length_acc_top1": 100 * firsts / max(1, len(examples)),
    }


def model_diagnostics_on(
    generator: Any, examples: Sequence[Example], batch_size: int = 64, seed: int = 0
) -> dict[str, float]:
    """``codefusion.diagnostics.model_diagnostics`` averaged over ``examples`` (CodeFusion only)."""
    from codefusion.diagnostics import model_diagnostics
    from codefusion.diffusion import Batch

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
