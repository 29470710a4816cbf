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

Model FLOPs per step are the library's analytic count (``codefusion.flops.codefusion_flops``: 6 x
the weights of every nn.Linear x the tokens it sees, plus the attention matmuls). MFU = achieved
FLOP/s / ``--peak-tflops`` (CUDA only; null on CPU).

Sampling = top-5 of ``--num-draws`` draws for one prompt (``CodeFusion.generate``), at ``--sample-steps`` (default T = 1200) and ``--respaced`` steps:

* reference: eager fp32, cross-attention K/V recomputed every step, reference kernels;
* eager cached (CUDA only; on CPU it is the optimised path's code): K/V computed once per call;
* optimised: ``fast=True`` (CUDA graph of one step, bf16, cached K/V, Triton) on CUDA;
  on CPU the same call runs the cached fp32 loop.

Timings exclude warm-up runs, synchronise the GPU around each run and report the median of the
repeats. Writes ``results.json`` and ``results.md`` (bench/report.py) under ``--out``. What is
run (synthetic tokenizer and batches, the timer) is in bench/workload.py; the op counts and
activation memory in bench/opcount.py.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.opcount import bench_memory, bench_op_counts  # noqa: E402
from bench.report import TARGET_STEPS, check_targets, environment, markdown  # noqa: E402
from bench.workload import (  # noqa: E402
    free,
    reference_kernels,
    synthetic_prompt,
    synthetic_tokenizer,
    timed,
    train_setup,
    triton_active,
)
from codefusion.baseline import ARBaseline  # noqa: E402
from codefusion.config import PRESETS, preset  # noqa: E402
from codefusion.flops import codefusion_flops  # noqa: E402
from codefusion.model import CodeFusionModel  # noqa: E402
from codefusion.pipeline import CodeFusion, build_model  # noqa: E402
from codefusion.sampling.graph import strict_graphs  # noqa: E402
from codefusion.tokenizer import CodeTokenizer  # noqa: E402

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
    respaced=TARGET_STEPS["respaced"],
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
    p.add_argument(
        "--peak-tflops",
        type=float,
        help="a measured dense bf16 peak (default: the device's by specification; "
        "bench/environment.py)",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile E, N, D and the sampling step"
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's; quick 1)")
    p.add_argument(
        "--profile", action="store_true",
        help="profile one optimised training step: time on the GPU vs wall time, the top kernels",
    )  # fmt: skip
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


# --- training ---------------------------------------------------------------------------------


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
    cfg, model, objective, opt, batch = train_setup(args, dev, batch_size, optimised)
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
        profiled = None
        if optimised and args.profile:
            from bench.profile_step import profile_step

            profiled = profile_step(step, dev)
    flops = codefusion_flops(model, batch_size, args.prompt_len)["train_step"]
    step_s = statistics.median(times)
    tflops = flops / step_s / 1e12
    result = {
        "batch_size": batch_size,
        "step_s": step_s,
        "step_s_all": times,
        "tokens_per_s": batch_size * cfg.code_len / step_s,
        "achieved_tflops": tflops,
        "flops_per_step": flops,
        "mfu": tflops / args.peak_tflops if args.peak_tflops else None,
        "precision": "bf16 autocast" if amp else "fp32",
        "optimizer": "AdamW(fused=True)" if optimised else "AdamW(fused=False), foreach default",
        "kernels": "triton" if optimised and triton_active(dev) else "reference",
        "compiled": compiled,
        "final_loss": float(last[0]) if last else None,
        "flops": codefusion_flops(model, batch_size, args.prompt_len),
        "max_memory_gib": (
            torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        ),
    }
    if profiled is not None:
        result["profile"] = profiled
    return result


# --- sampling ---------------------------------------------------------------------------------


def top_k(cf: CodeFusion, prompt: str, steps: int | None, args: argparse.Namespace, **opts: Any):
    """``generate`` for one prompt: the draws, decoding, ranking, top k."""
    return cf.generate(
        prompt, k=args.k, num_draws=args.num_draws, seed=args.seed, steps=steps, **opts
    )


def bench_sampling(args: argparse.Namespace, dev: torch.device, tok: CodeTokenizer) -> dict:
    torch.manual_seed(args.seed)
    cfg = preset(args.preset, vocab_size=len(tok))
    cf = CodeFusion(build_model(cfg, tok), tok).to(dev)
    prompt = synthetic_prompt(args.prompt_tokens)
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
    """The autoregressive baseline's top-k latency, at the size of ``--preset``."""
    torch.manual_seed(args.seed)
    base = ARBaseline.from_preset(args.preset, tok).to(dev)
    prompt = synthetic_prompt(args.prompt_tokens)
    times = timed(
        lambda: base.generate(prompt, k=args.k, seed=args.seed),
        args.sample_warmup,
        args.repeats,
        dev,
    )
    return {
        "preset": args.preset,
        "parameters": base.num_parameters(),
        "median_s": statistics.median(times),
        "all_s": times,
        "options": f"generate(k={args.k}) defaults (beam search), eager fp32",
        "max_new_tokens": int(base.config.code_len),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    from bench.environment import device_name, peak_flops

    peak = peak_flops(device_name(dev), dev.type, args.peak_tflops)
    args.peak_tflops = None if peak is None else peak / 1e12
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
