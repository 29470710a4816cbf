"""How much work one step dispatches: aten ops, kernels, casts, copies and host reads.

A step that launches more kernels than its arithmetic can hide is bound by the host: at the
paper's sizes a training step of batch 64 is ~6 ms of math at 35% MFU, and a sampling step
well under a millisecond. :func:`count_ops` runs a function twice, once under each counter:

- ``dispatched`` (eager code; a ``TorchDispatchMode`` below autograd and autocast): the aten ops
  that do work, i.e. not views and bare allocations (``aten.t``, ``aten.empty_strided``, ...),
  so roughly one per kernel a GPU would launch; with ``casts`` (``_to_copy``: dtype
  conversions, autocast's included), ``copies`` (``clone``: ``.contiguous()`` and friends) and
  ``host_reads`` (``_local_scalar_dense``, ``nonzero``: ``.item()``, ``bool(t)``,
  data-dependent shapes, each of which waits for the GPU to drain its queue). torch.compile
  does not run compiled code under a dispatch mode, so this counter is null for compiled
  functions;
- ``profiled`` (``torch.profiler``, eager and compiled alike): aten ops called from Python or
  from compiled code (the outermost aten event of each call, views and allocations left out;
  an op that calls others, ``aten::linear`` or autocast's casts inside it, counts once)
  plus fused kernels of compiled code (inductor's C++ kernels on CPU, recorded when
  ``torch._inductor.config.cpp.enable_kernel_profile`` was set before compiling);
- ``kernels``: device kernels recorded by the profiler (CUDA only, else null).

The benchmark's op counts and activation memory (:func:`bench_op_counts`, :func:`bench_memory`)
are measured at the end of this module.
"""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from bench.workload import (
    reference_kernels,
    synthetic_batch,
    synthetic_prompt,
    train_setup,
    triton_active,
)
from codefusion.config import preset
from codefusion.diffusion import CodeFusionObjective
from codefusion.model import CodeFusionModel
from codefusion.pipeline import build_model
from codefusion.schedule import SqrtSchedule
from codefusion.tokenizer import CodeTokenizer

_ALLOCATIONS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided"}
_HOST_READS = {"_local_scalar_dense", "nonzero"}


@cache
def launches_nothing(name: str) -> bool:
    """Views and bare allocations (by aten name): ops that dispatch but compute nothing."""
    if name in _ALLOCATIONS:
        return True
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return False
    overloads = [getattr(packet, o) for o in packet.overloads()]
    return bool(overloads) and all(o.is_view for o in overloads)


class _Dispatched(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func._overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_dispatched(fn: Callable[[], Any]) -> dict[str, Any]:
    mode = _Dispatched()
    with mode:
        fn()
    work = Counter({k: v for k, v in mode.ops.items() if not launches_nothing(k)})
    return {
        "ops": sum(work.values()),
        "casts": mode.ops["_to_copy"],
        "copies": mode.ops["clone"],
        "host_reads": sum(mode.ops[k] for k in _HOST_READS),
        "top": dict(work.most_common(6)),
    }


def count_profiled(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    calls = fused = kernels = 0
    for e in prof.events():
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
            kernels += 1
        elif "cpp_fused" in e.name:
            fused += 1
        elif e.name.startswith(("aten::", "cfbench::")):
            parent = e.cpu_parent
            while parent is not None and not parent.name.startswith(("aten::", "cfbench::")):
                parent = parent.cpu_parent
            name = e.name.split("::", 1)[1]
            if parent is None and not (e.name.startswith("aten::") and launches_nothing(name)):
                calls += 1
    return {
        "ops": calls + fused,
        "aten_calls": calls,
        "fused_kernels": fused,
        "kernels": kernels if device.type == "cuda" else None,
    }


def count_ops(
    fn: Callable[[], Any], device: torch.device | str, compiled: bool = False
) -> dict[str, Any]:
    """Both counts of one call of ``fn`` (call it before, to leave compilation and lazy
    initialisation out). ``compiled``: ``fn`` runs compiled code (no dispatch-mode count)."""
    device = torch.device(device)
    return {
        "dispatched": None if compiled else count_dispatched(fn),
        "profiled": count_profiled(fn, device),
    }


_ADALN = None


def _adaln_op():
    """``codefusion.kernels.reference.modulated_layer_norm`` registered as one custom op."""
    global _ADALN
    if _ADALN is None:
        from codefusion.kernels import reference

        @torch.library.custom_op("cfbench::modulated_layer_norm", mutates_args=())
        def adaln(
            x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
        ) -> torch.Tensor:
            return reference.modulated_layer_norm(x, shift, scale, eps)

        _ADALN = adaln
    return _ADALN


@contextlib.contextmanager
def adaln_as_one_kernel(copy_inputs: bool = False):
    """Within this block (no autograd) N's adaLN counts as one op, as the fused Triton kernel
    is one launch on a GPU, where the CPU reference dispatches several. ``copy_inputs``: as the
    kernel's wrapper did before this change, ``.contiguous()`` of x, shift and scale first
    (shift and scale are slices of the modulation: two copies per norm)."""
    import codefusion.model as model_mod

    op, real = _adaln_op(), model_mod.modulated_layer_norm

    def fused(x, shift, scale, eps=1e-5):
        if copy_inputs:
            x, shift, scale = x.contiguous(), shift.contiguous(), scale.contiguous()
        return op(x, shift, scale, float(eps))

    model_mod.modulated_layer_norm = fused
    try:
        yield
    finally:
        model_mod.modulated_layer_norm = real


# --- the benchmark's op counts and activation memory ------------------------------------------


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

    from train.ema import _ForeachEMA, _HostCountedAverage

    batch_size = min(args.batch_size, 8)  # counts do not depend on the batch
    out: dict[str, Any] = {"batch_size": batch_size}

    def make(optimised: bool):
        cfg, model, objective, opt, batch = train_setup(args, dev, batch_size, optimised)
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
    from codefusion.model import attention_mask
    from codefusion.sampling import SamplingOptions, ddim
    from codefusion.sampling import graph as G
    from codefusion.sampling.denoise import Conditioning, DenoiseSpec, make_denoise

    def as_on_gpu(copy_inputs: bool = False):
        # On CPU N's adaLN counts as one op, as the Triton kernel is one launch on a GPU
        # (copy_inputs: with the copies its wrapper made before this change).
        return nullcontext() if dev.type == "cuda" else adaln_as_one_kernel(copy_inputs)

    torch.manual_seed(args.seed)
    cfg = preset(args.preset, vocab_size=len(tok))
    model = build_model(cfg, tok).to(dev).eval()
    schedule = SqrtSchedule(cfg.diffusion_steps).to(dev)
    prompt = synthetic_prompt(args.prompt_tokens)
    ids, mask, _ = tok.encode_prompts([prompt], cfg.max_prompt_len)
    n = args.num_draws
    out: dict[str, Any] = {"draws": n, "prompt_tokens": int(mask.sum())}
    with torch.no_grad():
        enc = model.encode(ids.to(dev), mask.to(dev))  # one prompt: its draws share E(s)
        x = torch.randn(n, cfg.code_len, cfg.latent_dim, device=dev)
        plan = ddim.StepPlan.build(schedule, schedule.timesteps(None), 0.0)
        t, c = plan.t[5].expand(n), plan.coef_at(5)
        spec = DenoiseSpec(prediction=cfg.prediction, self_condition=cfg.self_condition)
        denoise = make_denoise(spec, model.denoise)
        x0_self = torch.zeros_like(x)

        def one_step(kv, mask=None) -> None:
            x0, _ = denoise(x, t, c, Conditioning(kv, mask), x0_self)
            ddim.ddim_update(x, x0, c)

        def plain(cached_kv) -> Callable[[], Any]:
            return lambda: one_step(cached_kv or model.denoiser.cross_kv(enc))

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
        m = attention_mask(F.pad(torch.ones(1, s, dtype=torch.long, device=dev), (0, pad)))

        def before() -> None:
            with torch.autocast(dev.type, dtype=torch.bfloat16, cache_enabled=False):
                one_step(kv_pad, m)

        with as_on_gpu(copy_inputs=True):
            before()
            out["fast step, before (fp32 N under autocast)"] = count_ops(before, dev)

        def runner_for(backend: str | None) -> G.DenoiseStep:
            G._STEPS.pop(model, None)
            g = torch.Generator(device=dev).manual_seed(0)
            G.sample_graph(
                model, schedule, enc, None, n, g, SamplingOptions(steps=2), use_graph=False,
                dtype=torch.bfloat16, compile_backend=backend,
            )  # fmt: skip
            (runner,) = G._STEPS[model].values()
            return runner

        runner = runner_for(None)
        with as_on_gpu():
            runner._run()
            out["fast step, now (bf16 copy of N)"] = count_ops(lambda: runner._run(), dev)
        if args.compile:
            import torch._inductor.config as inductor_config

            inductor_config.cpp.enable_kernel_profile = True
            runner = runner_for("inductor")
            runner._run()
            out["fast step, now, compiled"] = count_ops(lambda: runner._run(), dev, compiled=True)
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
