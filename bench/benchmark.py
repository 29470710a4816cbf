"""Training throughput / MFU and top-5 sampling latency, reference and optimised paths side by side.

    python bench/benchmark.py --preset paper --device cuda --out results/bench
    python bench/benchmark.py --quick --device cpu --preset small --out results/bench-cpu

Random weights, a synthetic word-level tokenizer of ``--vocab-size`` tokens (16,384 by default)
and synthetic batches: the figures depend on shapes, not on what the model has learnt (except the
autoregressive baseline's, which stops at the end token: with random weights it never does, so
its latency is the worst case of ``code_len`` new tokens).

Training step = the objective on one batch, backward, AdamW step (no clipping, no logging):

* reference: eager fp32, ``AdamW(fused=False)`` (PyTorch's default foreach implementation), the
  PyTorch reference kernels (``CODEFUSION_DISABLE_TRITON=1``), at ``--ref-batch-size`` (fp32
  activations at batch 512 and canvas 128 exceed an H100's memory);
* optimised: bf16 autocast (CUDA), ``AdamW(fused=True)``, Triton kernels (CUDA), and with
  ``--compile`` E, N and D compiled in place as training compiles them (train/run.py), at
  ``--batch-size`` (512 by default: MFU is judged at batch >= 512).
A batch that runs out of GPU memory is halved and retried (the batch used is reported).

Op counts (``op_counts``; bench/opcount.py): the aten ops one training step and one sampling
step dispatch (and on CUDA the kernels they launch), the casts, copies and host reads among
them, for the reference path, the optimised one as before this change and as now (the per-step
loss read, Lightning's EMA update, the autocast sampler) and, with ``--compile``, compiled.
Activation memory (``memory``): bytes saved for backward per example (optimised precision,
full-length prompts), the figure the configs' batch sizes are planned from.

Model FLOPs per step are analytic: 6 x (weights of every nn.Linear) x (tokens that linear sees:
prompt tokens for E and the cross-attention K/V projections, code tokens for the rest, one row per
example for the timestep MLPs) plus 3 x the attention matmuls (QK^T and AV: 4 x B x Sq x Sk x
width per layer, forward). MFU = achieved FLOP/s / ``--peak-tflops`` (CUDA only; null on CPU).

Sampling = top-5 of ``--num-draws`` draws for one prompt (``CodeFusion.sample_draws`` + ranking,
exactly ``generate``'s work), at ``--sample-steps`` (default T = 1200) and ``--respaced`` steps:

* reference: eager fp32, cross-attention K/V recomputed every step, reference kernels;
* eager cached (CUDA only; on CPU it is the optimised path's code): K/V computed once per call;
* optimised: ``fast=True`` (CUDA graph of one step, bf16, cached K/V, Triton) on CUDA;
  on CPU the same call runs the cached fp32 loop.

Timings exclude warm-up runs, synchronise the GPU around each run and report the median of the
repeats. Writes ``results.json`` and ``results.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from codefusion.config import PRESETS, preset  # noqa: E402
from codefusion.diffusion import Batch, CodeFusionObjective  # noqa: E402
from codefusion.kernels import HAS_TRITON  # noqa: E402
from codefusion.model import CodeFusionModel  # noqa: E402
from codefusion.pipeline import CodeFusion, build_model, rank_candidates  # noqa: E402
from codefusion.sampler import strict_graphs  # noqa: E402
from codefusion.schedule import SqrtSchedule  # noqa: E402
from codefusion.tokenizer import EOS, MASK, PAD, SPECIAL_TOKENS, UNK, CodeTokenizer  # noqa: E402

TARGETS = {
    "train_speedup_min": 3.0,  # optimised tokens/s >= 3x eager fp32
    "train_mfu_min": 0.35,  # on an H100, bf16 dense peak
    "top5_full_max_s": 0.3,  # top-5 at 1200 steps
    "top5_full_speedup_min": 5.0,  # vs eager fp32
    "top5_respaced_max_s": 0.040,  # top-5 at 100 respaced steps
}

# --quick: a CPU run in well under two minutes (explicit options still win).
QUICK = dict(
    batch_size=8,
    ref_batch_size=8,
    prompt_len=16,
    train_steps=5,
    train_warmup=2,
    sample_steps=100,
    respaced=25,
    repeats=3,
    sample_warmup=1,
    threads=1,
)
FULL = dict(
    batch_size=512,
    ref_batch_size=128,
    prompt_len=32,
    train_steps=20,
    train_warmup=5,
    sample_steps=None,  # the preset's T
    respaced=100,
    repeats=5,
    sample_warmup=2,
    threads=None,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Training tokens/s + MFU and top-5 sampling latency: reference vs optimised."
    )
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    p.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda if any")
    p.add_argument("--out", default="results/bench", type=Path)
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--batch-size", type=int, help="training batch (default 512; quick 8)")
    p.add_argument(
        "--ref-batch-size", type=int, help="the fp32 reference's batch (default 128; quick 8)"
    )
    p.add_argument("--prompt-len", type=int, help="training prompt tokens (default 32; quick 16)")
    p.add_argument("--prompt-tokens", type=int, default=12, help="words in the sampling prompt")
    p.add_argument("--train-steps", type=int, help="timed training steps (default 20; quick 5)")
    p.add_argument("--train-warmup", type=int, help="untimed training steps (default 5; quick 2)")
    p.add_argument(
        "--sample-steps", type=int, help="the long sampling run (default: T = 1200; quick 100)"
    )
    p.add_argument("--respaced", type=int, help="the respaced run's steps (default 100; quick 25)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--num-draws", type=int, default=10)
    p.add_argument("--repeats", type=int, help="timed sampling runs (median; default 5; quick 3)")
    p.add_argument("--sample-warmup", type=int, help="untimed sampling runs (default 2; quick 1)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM bf16 dense: 989")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile E, N, D and the sampling step"
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's; quick 1)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-sample", action="store_true")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--skip-ops", action="store_true", help="no op counts, no memory figures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick", action="store_true", help="small batch, few steps: a CPU run in < 2 minutes"
    )
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


# --- helpers ----------------------------------------------------------------------------------


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


def train_flops(model: CodeFusionModel, batch_size: int, prompt_len: int) -> dict[str, float]:
    """Analytic model FLOPs of one training step (forward + backward = 3 x forward)."""
    cfg = model.config
    b, s, c = batch_size, prompt_len, cfg.code_len

    def linear_weights(module: nn.Module, keep: Callable[[str], bool] = lambda n: True) -> int:
        return sum(
            m.weight.numel()
            for n, m in module.named_modules()
            if isinstance(m, nn.Linear) and keep(n)
        )

    def kv(n: str) -> bool:
        return n.endswith("cross_attn.kv_proj")

    def timestep(n: str) -> bool:
        return n.startswith(("time_mlp", "time_mod"))

    stacks = (model.denoiser, model.decoder)
    per_prompt_token = linear_weights(model.encoder) + sum(linear_weights(m, kv) for m in stacks)
    per_example = linear_weights(model.denoiser, timestep)
    per_code_token = linear_weights(model.head) + sum(
        linear_weights(m, lambda n: not kv(n) and not timestep(n)) for m in stacks
    )
    matmul = 2 * (per_prompt_token * b * s + per_code_token * b * c + per_example * b)
    enc = model.encoder.config
    d = cfg.hidden_dim
    attention = 4 * b * s * s * enc.num_heads * enc.d_kv * enc.num_layers + (
        cfg.denoiser_layers + cfg.decoder_layers
    ) * (4 * b * c * c * d + 4 * b * c * s * d)
    forward = matmul + attention
    return {
        "forward": float(forward),
        "train_step": float(3 * forward),
        "matmul_weights": {
            "per_prompt_token": per_prompt_token,
            "per_code_token": per_code_token,
            "per_example": per_example,
        },
    }


# --- training ---------------------------------------------------------------------------------


def _train_setup(args: argparse.Namespace, dev: torch.device, batch_size: int, optimised: bool):
    torch.manual_seed(args.seed)
    cfg = preset(args.preset, vocab_size=args.vocab_size)
    model = CodeFusionModel(cfg).to(dev).train()
    schedule = SqrtSchedule(cfg.diffusion_steps, cfg.schedule_offset).to(dev)
    objective = CodeFusionObjective(schedule)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=optimised)
    batch = synthetic_batch(model, batch_size, args.prompt_len, args.seed).to(dev)
    return cfg, model, objective, opt, batch


def bench_training(args: argparse.Namespace, dev: torch.device, optimised: bool) -> dict:
    """Times the training step; a batch that runs out of GPU memory is halved and retried."""
    batch_size = args.batch_size if optimised else args.ref_batch_size
    while True:
        try:
            return _bench_training(args, dev, optimised, batch_size)
        except torch.cuda.OutOfMemoryError:
            free(dev)
            if batch_size == 1:
                raise
            print(f"batch {batch_size}: out of memory, retrying at {batch_size // 2}")
            batch_size //= 2


def _bench_training(
    args: argparse.Namespace, dev: torch.device, optimised: bool, batch_size: int
) -> dict:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)  # this path's peak, not the previous one's
    cfg, model, objective, opt, batch = _train_setup(args, dev, batch_size, optimised)
    amp = optimised and dev.type == "cuda"
    compiled = optimised and args.compile
    if compiled:
        from train.run import compile_model

        compile_model(model)  # E, N and D in place, as training does

    last: list[float] = []

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = objective(model, batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last[:] = [loss.detach()]

    warmup = max(args.train_warmup, 3 if compiled else 0)
    with nullcontext() if optimised else reference_kernels():
        times = timed(step, warmup, args.train_steps, dev)
    flops = train_flops(model, batch_size, args.prompt_len)["train_step"]
    step_s = statistics.median(times)
    tflops = flops / step_s / 1e12
    result = {
        "batch_size": batch_size,
        "step_s": step_s,
        "step_s_all": times,
        "tokens_per_s": batch_size * cfg.code_len / step_s,
        "achieved_tflops": tflops,
        "flops_per_step": flops,
        "mfu": tflops / args.peak_tflops if dev.type == "cuda" else None,
        "precision": "bf16 autocast" if amp else "fp32",
        "optimizer": "AdamW(fused=True)" if optimised else "AdamW(fused=False), foreach default",
        "kernels": "triton" if optimised and triton_active(dev) else "reference",
        "compiled": compiled,
        "final_loss": float(last[0]) if last else None,
        "flops": train_flops(model, batch_size, args.prompt_len),
        "max_memory_gib": (
            torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        ),
    }
    return result


# --- op counts and activation memory ----------------------------------------------------------


def bench_op_counts(args: argparse.Namespace, dev: torch.device, tok: CodeTokenizer) -> dict:
    """Ops per training step and per sampling step (bench/opcount.py), before and after."""
    return {
        "training": training_op_counts(args, dev),
        "sampling": sampling_op_counts(args, dev, tok),
    }


def training_op_counts(args: argparse.Namespace, dev: torch.device) -> dict:
    """One training step as the training loop runs it on a GPU: bf16 autocast with Lightning's
    settings (cast cache off), fused AdamW, gradient clipping and the EMA update; "before"
    adds the per-step loss read (terms stacked, ``isfinite``) and Lightning's EMA update
    (``AveragedModel``, two reads of its count); "eager fp32" is the benchmark's reference."""
    from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

    from bench.opcount import count_ops
    from train.ema import _ForeachEMA, _HostCountedAverage

    batch_size = min(args.batch_size, 8)  # counts do not depend on the batch
    out: dict[str, Any] = {"batch_size": batch_size}

    def make(optimised: bool):
        cfg, model, objective, opt, batch = _train_setup(args, dev, batch_size, optimised)
        return model, objective, opt, batch

    # Reference: eager fp32, foreach AdamW, reference kernels.
    model, objective, opt, batch = make(False)

    def ref_step() -> None:
        objective(model, batch)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with reference_kernels():
        ref_step()
        out["reference (eager fp32)"] = count_ops(ref_step, dev)

    def loop_step(model, objective, opt, batch, ema, before: bool) -> Callable[[], None]:
        def step() -> None:
            with torch.autocast(dev.type, dtype=torch.bfloat16, cache_enabled=False):
                out_ = objective(model, batch)
            loss = out_["loss"]
            if before:  # the old training_step: every step read its loss
                terms = torch.stack([v.detach().float() for v in out_.values()])
                bool(torch.isfinite(terms[-1]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update_parameters(model)

        return step

    for label, before in (("optimised, before", True), ("optimised, now", False)):
        model, objective, opt, batch = make(True)
        if before:  # Lightning's EMAWeightAveraging: a Python loop over the tensors
            ema = AveragedModel(model, avg_fn=get_ema_avg_fn(0.999), use_buffers=True)
        else:
            ema = AveragedModel(model, multi_avg_fn=_ForeachEMA(0.999), use_buffers=True)
            ema.__class__ = _HostCountedAverage
        step = loop_step(model, objective, opt, batch, ema, before)
        step()
        step()  # the EMA's first update copies; the second averages
        out[label] = count_ops(step, dev)
        out[label + " (EMA update alone)"] = count_ops(
            lambda ema=ema, model=model: ema.update_parameters(model), dev
        )
    if args.compile:
        import torch._inductor.config as inductor_config

        from train.run import compile_model

        inductor_config.cpp.enable_kernel_profile = True  # fused CPU kernels in the profile
        model, objective, opt, batch = make(True)
        ema = AveragedModel(model, multi_avg_fn=_ForeachEMA(0.999), use_buffers=True)
        ema.__class__ = _HostCountedAverage
        compile_model(model)
        step = loop_step(model, objective, opt, batch, ema, False)
        for _ in range(3):
            step()
        out["optimised, now, compiled"] = count_ops(step, dev, compiled=True)
    return out


def sampling_op_counts(args: argparse.Namespace, dev: torch.device, tok: CodeTokenizer) -> dict:
    """One denoising step of top-k sampling (``num_draws`` draws of one prompt): the plain
    loop's, and the fast path's step function as it is captured on a GPU (counted eagerly, or
    compiled), before (fp32 N under bf16 autocast with its cast cache off, K/V padded to
    ``max_prompt_len`` with a mask, the adaLN kernel's input copies) and now (a bf16 copy of N,
    no autocast, K/V in the prompt's bucket, no mask for one unpadded prompt, strides). On CPU
    the adaLN counts as one op except in the reference (bench/opcount.py)."""
    from bench.opcount import adaln_as_one_kernel, count_ops
    from codefusion import sampler as S
    from codefusion.model import attention_mask

    def as_on_gpu(copy_inputs: bool = False):
        # On CPU N's adaLN counts as one op, as the Triton kernel is one launch on a GPU
        # (copy_inputs: with the copies its wrapper made before this change).
        return nullcontext() if dev.type == "cuda" else adaln_as_one_kernel(copy_inputs)

    torch.manual_seed(args.seed)
    cfg = preset(args.preset, vocab_size=len(tok))
    model = build_model(cfg, tok).to(dev).eval()
    schedule = SqrtSchedule(cfg.diffusion_steps, cfg.schedule_offset).to(dev)
    prompt = " ".join(f"w{len(SPECIAL_TOKENS) + 37 * i}" for i in range(args.prompt_tokens))
    ids, mask, _ = tok.encode_prompts([prompt], cfg.max_prompt_len)
    n = args.num_draws
    out: dict[str, Any] = {"draws": n, "prompt_tokens": int(mask.sum())}
    with torch.no_grad():
        enc = model.encode(ids.to(dev), mask.to(dev)).repeat_interleave(n, 0)
        x = torch.randn(n, cfg.code_len, cfg.latent_dim, device=dev)
        t_plan, coef = S.step_plan(schedule, schedule.timesteps(None), 0.0)
        t, c = t_plan[5].expand(n), coef[5]

        def plain(cached_kv) -> Callable[[], Any]:
            return lambda: S.ddim_step(
                model, x, t, c, cached_kv or model.denoiser.cross_kv(enc), None
            )

        with reference_kernels():
            plain(None)()
            out["reference (fp32, K/V per step)"] = count_ops(plain(None), dev)
        kv = model.denoiser.cross_kv(enc)
        with as_on_gpu():
            plain(kv)()
            out["plain loop (fp32, cached K/V)"] = count_ops(plain(kv), dev)

        # Before: the captured step ran fp32 N under autocast (cast cache off under capture)
        # on K/V padded to max_prompt_len with a mask.
        s = enc.shape[1]
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            kv_amp = model.denoiser.cross_kv(enc)
        pad = cfg.max_prompt_len - s
        kv_pad = [tuple(F.pad(a, (0, 0, 0, pad)) for a in pair) for pair in kv_amp]
        m = attention_mask(F.pad(torch.ones(n, s, dtype=torch.long, device=dev), (0, pad)))

        def before() -> None:
            with torch.autocast(dev.type, dtype=torch.bfloat16, cache_enabled=False):
                S.ddim_step(model, x, t, c, kv_pad, m)

        with as_on_gpu(copy_inputs=True):
            before()
            out["fast step, before (fp32 N under autocast)"] = count_ops(before, dev)

        def runner_for(backend: str | None) -> S.DenoiseStep:
            S._STEPS.pop(model, None)
            g = torch.Generator(device=dev).manual_seed(0)
            S.sample_fast(
                model, schedule, enc, None, g, steps=2, use_graph=False,
                dtype=torch.bfloat16, compile_backend=backend,
            )  # fmt: skip
            (runner,) = S._STEPS[model].values()
            return runner

        runner = runner_for(None)
        with as_on_gpu():
            runner._run(model)
            out["fast step, now (bf16 copy of N)"] = count_ops(lambda: runner._run(model), dev)
        if args.compile:
            import torch._inductor.config as inductor_config

            inductor_config.cpp.enable_kernel_profile = True
            runner = runner_for("inductor")
            runner._run(model)
            out["fast step, now, compiled"] = count_ops(
                lambda: runner._run(model), dev, compiled=True
            )
    return out


def bench_memory(args: argparse.Namespace, dev: torch.device) -> dict:
    """Activation bytes saved for backward per example: the slope between two batch sizes
    (what does not grow with the batch, such as weight casts, cancels), full-length prompts,
    the optimised path's precision (bf16 autocast; Triton kernels on CUDA)."""
    cfg = preset(args.preset, vocab_size=args.vocab_size)
    prompt_len = cfg.max_prompt_len

    def saved(batch_size: int) -> int:
        torch.manual_seed(args.seed)
        model = CodeFusionModel(cfg).to(dev).train()
        objective = CodeFusionObjective(SqrtSchedule(cfg.diffusion_steps).to(dev))
        batch = synthetic_batch(model, batch_size, prompt_len, args.seed)
        batch.prompt_mask[:] = 1
        batch = batch.to(dev)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            st = t.untyped_storage()
            if st.data_ptr() not in params:
                seen[st.data_ptr()] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(dev.type, dtype=torch.bfloat16, cache_enabled=False):
                objective(model, batch)
        return sum(seen.values())

    per_example = (saved(4) - saved(2)) / 2
    return {
        "code_len": cfg.code_len,
        "prompt_len": prompt_len,
        "precision": "bf16 autocast",
        "kernels": "triton" if triton_active(dev) else "reference",
        "saved_mib_per_example": per_example / 2**20,
    }


# --- sampling ---------------------------------------------------------------------------------


def top_k(
    cf: CodeFusion, prompt: str, steps: int | None, args: argparse.Namespace, **opts: Any
) -> list:
    """``generate``'s work for one prompt: the draws, decoding, ranking, top k."""
    out = cf.sample_draws([prompt], args.num_draws, steps=steps, seed=args.seed, **opts)
    codes = [cf.tokenizer.decode(r) for r in out.tokens.tolist()]
    return rank_candidates(codes, out.scores.tolist(), args.k)


def bench_sampling(args: argparse.Namespace, dev: torch.device, tok: CodeTokenizer) -> dict:
    torch.manual_seed(args.seed)
    cfg = preset(args.preset, vocab_size=len(tok))
    cf = CodeFusion(build_model(cfg, tok), tok).to(dev)
    prompt = " ".join(f"w{len(SPECIAL_TOKENS) + 37 * i}" for i in range(args.prompt_tokens))
    total = cfg.diffusion_steps
    full = args.sample_steps or total
    counts = [(f"{full} steps", None if full == total else full)]
    if args.respaced and args.respaced != full:
        counts.append((f"{args.respaced} steps (respaced)", args.respaced))
    paths: list[tuple[str, dict, Callable[[], Any]]] = [
        (
            "reference",
            dict(fast=False, cache_cross_kv=False),
            reference_kernels,
        ),
        ("optimised", dict(fast=True, cache_cross_kv=True), nullcontext),
    ]
    if dev.type == "cuda":  # on CPU this is the optimised call's code path
        paths.insert(1, ("eager_cached", dict(fast=False, cache_cross_kv=True), reference_kernels))
    out: dict[str, Any] = {"runs": []}
    for label, steps in counts:
        row: dict[str, Any] = {"label": label, "steps": steps or total}
        for name, opts, ctx in paths:
            # strict_graphs: a step that cannot be compiled or captured is an error here, not
            # a warning and a slow eager loop timed as the optimised path.
            with ctx(), strict_graphs():
                times = timed(
                    lambda opts=opts, steps=steps: top_k(cf, prompt, steps, args, **opts),
                    args.sample_warmup,
                    args.repeats,
                    dev,
                )
            row[name] = {"median_s": statistics.median(times), "all_s": times, "options": opts}
        ref = row["reference"]["median_s"]
        row["speedup"] = {n: ref / row[n]["median_s"] for n, _, _ in paths if n != "reference"}
        out["runs"].append(row)
    out["precision"] = {
        "reference": "fp32",
        "optimised": (
            "bf16 copy of N, compiled step, CUDA graph" if dev.type == "cuda" else "fp32 (CPU)"
        ),
    }
    out["kernels"] = {
        "reference": "reference",
        "optimised": "triton" if triton_active(dev) else "reference",
    }
    return out


def bench_baseline(args: argparse.Namespace, dev: torch.device, tok: CodeTokenizer) -> dict:
    """The autoregressive baseline's top-k latency, if ``codefusion.baseline`` provides one."""
    try:
        from codefusion.baseline import AR_PRESETS, ARBaseline
    except Exception as e:  # another engineer's module: absent or not importable yet
        return {"status": "unavailable", "reason": f"{type(e).__name__}: {e}"}
    name = f"ar-{args.preset}"
    if name not in AR_PRESETS:
        return {"status": "skipped", "reason": f"no baseline preset {name}"}
    try:
        torch.manual_seed(args.seed)
        base = ARBaseline.from_preset(name, tok).to(dev)
        prompt = " ".join(f"w{len(SPECIAL_TOKENS) + 37 * i}" for i in range(args.prompt_tokens))
        times = timed(
            lambda: base.generate(prompt, k=args.k, seed=args.seed),
            args.sample_warmup,
            args.repeats,
            dev,
        )
        result = {
            "status": "ok",
            "preset": name,
            "parameters": base.num_parameters(),
            "median_s": statistics.median(times),
            "all_s": times,
            "options": f"generate(k={args.k}) defaults (beam search), eager fp32",
            "max_new_tokens": int(base.config.code_len),
        }
    except Exception as e:  # its API may still be moving: report, do not fail the benchmark
        result = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    return result


# --- report -----------------------------------------------------------------------------------


def environment(args: argparse.Namespace, dev: torch.device) -> dict:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + shlex.join(sys.argv),
        "git_sha": sha,
        "device": dev.type,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }


def check_targets(res: dict) -> dict:
    """The issue's targets; judged only for the paper preset on CUDA (null otherwise)."""
    judged = res["environment"]["device"] == "cuda" and res["settings"]["preset"] == "paper"
    met: dict[str, bool | None] = dict.fromkeys(TARGETS)
    train, samp = res.get("training"), res.get("sampling")
    if judged and train:
        met["train_speedup_min"] = train["speedup"] >= TARGETS["train_speedup_min"]
        mfu = train["optimised"]["mfu"]
        if train["optimised"]["batch_size"] >= 512:  # the issue: MFU at batch >= 512
            met["train_mfu_min"] = mfu is not None and mfu >= TARGETS["train_mfu_min"]
    if judged and samp:
        runs = samp["runs"]
        full = runs[0]
        if full["steps"] == 1200:
            met["top5_full_max_s"] = full["optimised"]["median_s"] < TARGETS["top5_full_max_s"]
            met["top5_full_speedup_min"] = (
                full["speedup"]["optimised"] >= TARGETS["top5_full_speedup_min"]
            )
        for run in runs[1:]:
            if run["steps"] == 100:
                met["top5_respaced_max_s"] = (
                    run["optimised"]["median_s"] < TARGETS["top5_respaced_max_s"]
                )
    return {"targets": TARGETS, "met": met, "judged": judged}


def fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def markdown(res: dict) -> str:
    env, st = res["environment"], res["settings"]
    lines = [
        f"# Benchmark: preset `{st['preset']}` on {env['device']} ({env['device_name']})",
        "",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}; git {env['git_sha']}",
        f"- torch {env['torch']} (CUDA {env['cuda']}), triton {env['triton']}, "
        f"Python {env['python']}, {env['cpu_threads']} CPU thread(s)",
        f"- parameters: {res['parameters']:,}; vocabulary {st['vocab_size']:,}; random weights",
        "",
    ]
    train = res.get("training")
    if train:
        opt_batch = train["optimised"]["batch_size"]
        lines += [
            f"## Training (prompt {st['prompt_len']}, "
            f"code {train['tokens_per_step'] // opt_batch} tokens; "
            f"median of {st['train_steps']} steps after {st['train_warmup']} warm-up)",
            "",
            f"Model FLOPs per step (analytic, batch {opt_batch}): "
            f"{train['flops_per_step'] / 1e9:,.2f} GFLOP. "
            f"MFU against {st['peak_tflops']:g} TFLOP/s (CUDA only).",
            "",
            "| path | batch | precision | optimizer | kernels | step | code tokens/s | TFLOP/s "
            "| MFU | peak memory |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in ("reference", "optimised"):
            r = train[name]
            mfu = "—" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            mem = "—" if r.get("max_memory_gib") is None else f"{r['max_memory_gib']:.1f} GiB"
            label = name + (" (compiled)" if r["compiled"] else "")
            lines.append(
                f"| {label} | {r['batch_size']} | {r['precision']} | {r['optimizer']} | "
                f"{r['kernels']} | {fmt_s(r['step_s'])} | {r['tokens_per_s']:,.0f} | "
                f"{r['achieved_tflops']:.4g} | {mfu} | {mem} |"
            )
        lines += ["", f"**Optimised / reference throughput: {train['speedup']:.2f}x**", ""]
    samp = res.get("sampling")
    if samp:
        names = [n for n in ("reference", "eager_cached", "optimised") if n in samp["runs"][0]]
        lines += [
            f"## Top-{st['k']} sampling latency ({st['num_draws']} draws, one prompt; "
            f"median of {st['repeats']} after {st['sample_warmup']} warm-up)",
            "",
            "| path | " + " | ".join(r["label"] for r in samp["runs"]) + " |",
            "|---|" + "---|" * len(samp["runs"]),
        ]
        desc = {
            "reference": "reference: eager fp32, K/V recomputed per step, reference kernels",
            "eager_cached": "eager fp32, cached K/V, reference kernels",
            "optimised": "optimised: "
            + (
                "CUDA graph, bf16, cached K/V, Triton"
                if env["device"] == "cuda"
                else "fast=True on CPU = eager fp32, cached K/V"
            ),
        }
        for n in names:
            cells = []
            for r in samp["runs"]:
                cell = fmt_s(r[n]["median_s"])
                if n != "reference":
                    cell += f" ({r['speedup'][n]:.2f}x)"
                cells.append(cell)
            lines.append(f"| {desc[n]} | " + " | ".join(cells) + " |")
        base = res.get("baseline")
        if base and base.get("status") == "ok":
            lines.append(
                f"| AR baseline `{base['preset']}` ({base['options']}, up to "
                f"{base['max_new_tokens']} tokens; no diffusion steps) | "
                + " | ".join([fmt_s(base["median_s"])] * len(samp["runs"]))
                + " |"
            )
        lines.append("")
        lines.append("Ratios in parentheses: reference latency / this path's latency.")
        if base and base.get("status") != "ok":
            lines.append(f"AR baseline: {base['status']} ({base.get('reason', '')}).")
        lines.append("")
    ops = res.get("op_counts")
    if ops:
        lines += op_count_lines(ops, env["device"])
    mem = res.get("memory")
    if mem:
        lines += [
            "## Activation memory",
            "",
            f"Saved for backward per example: **{mem['saved_mib_per_example']:.1f} MiB** "
            f"(canvas {mem['code_len']}, prompts of {mem['prompt_len']} tokens, "
            f"{mem['precision']}, {mem['kernels']} kernels).",
            "",
        ]
    tg = res["targets"]
    lines += ["## Targets (judged for the paper preset on CUDA only)", ""]
    for key, value in tg["targets"].items():
        met = tg["met"][key]
        verdict = "n/a" if met is None else ("met" if met else "NOT met")
        lines.append(f"- {key} = {value}: {verdict}")
    return "\n".join(lines) + "\n"


def op_count_lines(ops: dict, device: str) -> list[str]:
    lines = [
        "## Ops per step (bench/opcount.py)",
        "",
        "Dispatched: aten ops that do work (no views, no bare allocations), counted below "
        "autograd and autocast, eager code only; casts, `.contiguous()` copies and host reads "
        "(device syncs on a GPU) among them. Profiled: aten calls plus fused kernels of "
        "compiled code (torch.profiler)."
        + (" Kernels: CUDA kernels launched." if device == "cuda" else ""),
        "",
        "| step | dispatched ops | casts | copies | host reads | profiled ops | kernels |",
        "|---|---|---|---|---|---|---|",
    ]
    for part in ("training", "sampling"):
        for name, c in ops[part].items():
            if not isinstance(c, dict):
                continue
            d, p = c["dispatched"], c["profiled"]
            cells = ["—"] * 4 if d is None else [d["ops"], d["casts"], d["copies"], d["host_reads"]]
            kernels = "—" if p["kernels"] is None else p["kernels"]
            lines.append(
                f"| {part}: {name} | "
                + " | ".join(map(str, cells))
                + f" | {p['ops']} | {kernels} |"
            )
    t, s = ops["training"], ops["sampling"]
    lines += [
        "",
        f"Training: batch {t['batch_size']}, one step of the training loop (objective, backward, "
        "clipping, AdamW, EMA; bf16 autocast with Lightning's settings). Sampling: one "
        f"denoising step of {s['draws']} draws of a {s['prompt_tokens']}-token prompt.",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    tok = synthetic_tokenizer(args.vocab_size)
    cfg = preset(args.preset, vocab_size=len(tok))
    with torch.device("meta"):  # sizes only: no memory, no initialisation
        params = CodeFusionModel(cfg).parameter_counts()["total"]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["diffusion_steps"] = cfg.diffusion_steps
    res: dict[str, Any] = {
        "environment": environment(args, dev),
        "settings": settings,
        "parameters": params,
    }
    elapsed = res["elapsed_s"] = {}
    t0 = time.perf_counter()
    if not args.skip_train:
        ref = bench_training(args, dev, optimised=False)
        free(dev)
        opt = bench_training(args, dev, optimised=True)
        free(dev)
        del ref["flops"]
        flops = opt.pop("flops")
        res["training"] = {
            "tokens_per_step": opt["batch_size"] * cfg.code_len,
            "flops_per_step": flops["train_step"],
            "flops_detail": flops,
            "peak_tflops": args.peak_tflops,
            "reference": ref,
            "optimised": opt,
            "speedup": opt["tokens_per_s"] / ref["tokens_per_s"],
        }
        elapsed["training"] = time.perf_counter() - t0
    if not args.skip_ops:
        t0 = time.perf_counter()
        res["op_counts"] = bench_op_counts(args, dev, tok)
        free(dev)
        res["memory"] = bench_memory(args, dev)
        free(dev)
        elapsed["op_counts"] = time.perf_counter() - t0
    if not args.skip_sample:
        t0 = time.perf_counter()
        res["sampling"] = bench_sampling(args, dev, tok)
        free(dev)
        elapsed["sampling"] = time.perf_counter() - t0
    if not args.skip_baseline:
        t0 = time.perf_counter()
        res["baseline"] = bench_baseline(args, dev, tok)
        free(dev)
        elapsed["baseline"] = time.perf_counter() - t0
    res["targets"] = check_targets(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    md = markdown(res)
    (args.out / "results.md").write_text(md, encoding="utf-8")
    print(md)
    return 0 if all(math.isfinite(x) for x in _numbers(res)) else 1


def _numbers(obj: Any) -> Iterator[float]:
    """Every float in the results (a NaN/inf timing or loss fails the run)."""
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


if __name__ == "__main__":
    sys.exit(main())
