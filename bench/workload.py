"""What the benchmark runs and how it times it: synthetic tokenizer and batches, the training
setup, reference kernels, and a synchronised timer. Shared by the measurements
(bench/benchmark.py) and the op counts (bench/opcount.py)."""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from codefusion.config import preset
from codefusion.diffusion import Batch, CodeFusionObjective
from codefusion.kernels import HAS_TRITON
from codefusion.model import CodeFusionModel
from codefusion.schedule import SqrtSchedule
from codefusion.tokenizer import EOS, MASK, PAD, SPECIAL_TOKENS, UNK, CodeTokenizer


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], warmup: int, repeats: int, dev: torch.device) -> list[float]:
    """Seconds per call of ``repeats`` calls after ``warmup`` untimed ones; GPU synchronised."""
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return times


@contextmanager
def reference_kernels() -> Iterator[None]:
    """``CODEFUSION_DISABLE_TRITON=1`` for the duration (read by the dispatcher at each call)."""
    old = os.environ.get("CODEFUSION_DISABLE_TRITON")
    os.environ["CODEFUSION_DISABLE_TRITON"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["CODEFUSION_DISABLE_TRITON"]
        else:
            os.environ["CODEFUSION_DISABLE_TRITON"] = old


def free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def triton_active(dev: torch.device) -> bool:
    return HAS_TRITON and dev.type == "cuda"


def synthetic_tokenizer(vocab_size: int) -> CodeTokenizer:
    """A word-level tokenizer of exactly ``vocab_size`` tokens: the specials, then w4, w5, ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, mask_token=MASK
    )
    return CodeTokenizer(hf)


def synthetic_batch(model: CodeFusionModel, batch_size: int, prompt_len: int, seed: int) -> Batch:
    """Random prompts (half to full length) and code (a quarter to all of the canvas)."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    b, s, c = batch_size, prompt_len, cfg.code_len
    lo = len(SPECIAL_TOKENS)

    def rows(width: int, min_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(lo, cfg.vocab_size, (b, width), generator=g)
        lens = torch.randint(min_len, width + 1, (b,), generator=g)
        pos = torch.arange(width)[None]
        ids = torch.where(pos < lens[:, None] - 1, ids, cfg.pad_id)
        ids = torch.where(pos == lens[:, None] - 1, cfg.eos_id, ids)
        return ids, (pos < lens[:, None]).long()

    prompt_ids, prompt_mask = rows(s, max(1, s // 2))
    code_ids, _ = rows(c, max(1, c // 4))
    return Batch(prompt_ids, prompt_mask, code_ids, torch.zeros(b, dtype=torch.bool))


def train_setup(args: argparse.Namespace, dev: torch.device, batch_size: int, optimised: bool):
    torch.manual_seed(args.seed)
    cfg = preset(args.preset, vocab_size=args.vocab_size)
    model = CodeFusionModel(cfg).to(dev).train()
    schedule = SqrtSchedule(cfg.diffusion_steps).to(dev)
    objective = CodeFusionObjective(schedule)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=optimised)
    batch = synthetic_batch(model, batch_size, args.prompt_len, args.seed).to(dev)
    return cfg, model, objective, opt, batch


def synthetic_prompt(words: int) -> str:
    """A sampling prompt of ``words`` tokens of the synthetic tokenizer."""
    return " ".join(f"w{len(SPECIAL_TOKENS) + 37 * i}" for i in range(words))
