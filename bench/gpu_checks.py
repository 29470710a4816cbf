"""The checks of every GPU-only path, one function each: the smoke command (bench/smoke.py) runs
them on a GPU, and the tests run the same functions on CPU stand-ins (the Triton interpreter, a
"graph" that replays by calling the captured function, dynamo's eager backend).

- :func:`compare_kernels`: each Triton kernel against its PyTorch reference, forward and
  backward, fp32 and bf16, on sizes that are not multiples of the blocks and on strided inputs;
- :func:`capture_and_compare`: the fast sampler's step (bf16 copy of N, compiled) captured as
  one CUDA graph in strict mode, its replay equal to the same step run without the graph (within
  bf16's rounding), a whole call against the plain fp32 loop, and no compilation on a second
  call of the same shapes;
- :func:`compiled_training`: both stages on fixture data with bf16-mixed, clipping, EMA and
  ``compile: true`` (prompts padded to a fixed width), no graph compiled after each stage's
  warm-up, then the export reloaded by the strict loader and used to generate.

Each compiled function is traced once per shape and mode; nothing recompiles after warm-up, so
the smoke's time is bounded by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

FP32_RTOL, BF16_TOL = 1e-4, 2e-2  # tests/test_kernels.py
BF16_ULP = 2.0**-7  # bf16's relative spacing: tolerances of bf16 outputs are multiples of it


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _close(got: torch.Tensor, want: torch.Tensor, bf16: bool, what: str) -> float:
    got, want = got.double(), want.double()
    scale = want.abs().max().item()
    if bf16:
        rtol, atol = BF16_TOL, BF16_TOL * max(scale, 1.0)
    else:
        rtol, atol = FP32_RTOL, FP32_RTOL * scale
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
    return (got - want).abs().max().item()


def compare_kernels(dev: torch.device) -> dict[str, Any]:
    """The kernels against the references (CPU tensors: under TRITON_INTERPRET=1 only)."""
    from codefusion.kernels import HAS_TRITON
    from codefusion.kernels import reference as ref

    if not HAS_TRITON:
        raise RuntimeError("triton is not importable")
    from codefusion.kernels import triton_kernels as tk

    g = torch.Generator(device=dev).manual_seed(0)
    errors: dict[str, float] = {}

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=dev)

    for dtype in (torch.float32, torch.bfloat16):
        bf16 = dtype == torch.bfloat16
        name = "bf16" if bf16 else "fp32"
        for strided in (False, True):
            b, n, d = 3, 37, 96
            if strided:
                x = (randn(b, n, 2 * d) * 2 + 0.5).to(dtype)[..., d:].requires_grad_()
                mods = (0.5 * randn(b, 9, d)).to(dtype).unbind(1)
                shift, scale = mods[3].requires_grad_(), mods[4].requires_grad_()
            else:
                x = (randn(b, n, d) * 2 + 0.5).to(dtype).requires_grad_()
                shift = (0.5 * randn(b, d)).to(dtype).requires_grad_()
                scale = (0.5 * randn(b, d)).to(dtype).requires_grad_()
            dy = randn(b, n, d).to(dtype)
            y = tk.modulated_layer_norm(x, shift, scale)
            grads = torch.autograd.grad(y, (x, shift, scale), dy)
            xs = [t.detach().float().requires_grad_() for t in (x, shift, scale)]
            y_ref = ref.modulated_layer_norm(*xs)
            grads_ref = torch.autograd.grad(y_ref, xs, dy.float())
            tag = f"adaLN {name}{' strided' if strided else ''}"
            errors[tag + " y"] = _close(y, y_ref.to(dtype), bf16, tag)
            for gname, gv, gr, t in zip(("dx", "dshift", "dscale"), grads, grads_ref, (x, shift, scale), strict=True):  # fmt: skip
                errors[f"{tag} {gname}"] = _close(gv, gr.to(t.dtype), bf16, f"{tag} {gname}")
        nrows, dz, v = 45, 40, 1001
        h = randn(nrows, dz).to(dtype).requires_grad_()
        w = (randn(v, dz) / dz**0.5).to(dtype).requires_grad_()
        bias = (0.1 * randn(v)).to(dtype).requires_grad_()
        targets = torch.randint(0, v, (nrows,), generator=g, device=dev)
        pw = (torch.rand(nrows, generator=g, device=dev) + 0.1).requires_grad_()
        loss = tk.linear_cross_entropy(h, w, bias, targets, pw, chunk_size=16, block_v=256)
        got = torch.autograd.grad(loss, (h, w, bias, pw))
        loss_ref = ref.linear_cross_entropy(h, w, bias, targets, pw)
        want = torch.autograd.grad(loss_ref, (h, w, bias, pw))
        errors[f"linear+CE {name} loss"] = _close(loss, loss_ref.float(), bf16, "loss")
        for gname, gv, gr in zip(("dh", "dw", "db", "dpw"), got, want, strict=True):
            errors[f"linear+CE {name} {gname}"] = _close(gv, gr, bf16, f"CE {name} {gname}")
    return {"max_abs_error": errors}


def tiny_codefusion(dev: torch.device):
    """A tiny CodeFusion on the fixture vocabulary, random weights everywhere."""
    from bench.fixtures import CF_CODES, CF_PROMPTS
    from codefusion.config import preset
    from codefusion.pipeline import CodeFusion, build_model
    from codefusion.tokenizer import CodeTokenizer, train_bpe

    tok = CodeTokenizer(train_bpe((CF_CODES + CF_PROMPTS) * 20, vocab_size=300, min_frequency=1))
    torch.manual_seed(0)
    model = build_model(preset("tiny", code_len=16), tok)
    with torch.no_grad():  # random weights everywhere (the modulation starts at zero)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return CodeFusion(model, tok).to(dev)


def capture_and_compare(
    dev: torch.device, backend: str = "inductor", dtype: torch.dtype | None = torch.bfloat16
) -> dict[str, Any]:
    """The sampling check (see the module doc); the tests run it on CPU with a stand-in graph,
    the eager backend and ``dtype=None`` (fp32)."""
    from codefusion.sampling import SamplingOptions, ddim, sample
    from codefusion.sampling import graph as S

    cf = tiny_codefusion(dev)
    model, sched = cf.model, cf.schedule
    ids, mask, _ = cf.tokenizer.encode_prompts(["cells greater than 5"], 48)
    enc = model.encode(ids.to(dev), mask.to(dev)).detach()
    opts = SamplingOptions(steps=8)
    out: dict[str, Any] = {}

    def fast(seed: int, prompt_enc: torch.Tensor):
        gen = torch.Generator(device=dev).manual_seed(seed)
        return S.sample_graph(
            model, sched, prompt_enc, None, 10, gen, opts, use_graph=True, dtype=dtype,
            compile_backend=backend,
        )  # fmt: skip

    with torch.no_grad(), S.strict_graphs():
        S._STEPS.pop(model, None)
        first = fast(3, enc)
        (runner,) = S._STEPS[model].values()
        if runner.graph is None:
            raise RuntimeError("no CUDA graph was captured")
        if not runner.compiled:
            raise RuntimeError("the captured step is not compiled")
        out["compiled"] = True
        graphs = compiled_graphs()
        # Another prompt of the same length: the same static shapes, nothing compiled.
        ids2, mask2, _ = cf.tokenizer.encode_prompts(["cells greater than 7"], 48)
        if ids2.shape != ids.shape:
            raise RuntimeError("the check's two prompts must have one length")
        fast(4, model.encode(ids2.to(dev), mask2.to(dev)).detach())
        out["graphs_compiled_on_a_second_call"] = compiled_graphs() - graphs
        if out["graphs_compiled_on_a_second_call"]:
            raise RuntimeError("a second call of the same shapes compiled the step again")
        # The replay against the function it captured, on the same inputs.
        x = torch.randn(runner.x.shape, device=dev, generator=torch.Generator(dev).manual_seed(1))
        kv = runner.net.cross_kv(enc.to(next(runner.net.parameters()).dtype))
        plan = ddim.StepPlan.build(sched, sched.timesteps(8), 0.0)
        results = []
        for replay in (True, False):
            runner.load(x, S.Conditioning(kv, None))
            runner.t.copy_(plan.t[2])
            runner.coef.copy_(plan.coef[2])
            runner.graph.replay() if replay else runner._run()
            results.append((runner.x.clone(), runner.x0.clone()))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        # The same kernels on the same inputs: equal but for bf16 rounding of N's output.
        tol = 4 * BF16_ULP if dtype == torch.bfloat16 else 1e-5
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, atol=tol * max(1.0, b.abs().max().item()), rtol=tol)
        out["replay_vs_step_max_abs"] = max(
            (a - b).abs().max().item() for a, b in zip(*results, strict=True)
        )
        gen = torch.Generator(device=dev).manual_seed(3)
        plain = sample(model, sched, enc, None, 10, gen, SamplingOptions(steps=8, fast=False))
        agree = (first.tokens == plain.tokens).float().mean().item()
        out["tokens_equal_to_plain_fp32_loop"] = agree
        out["score_max_abs_diff"] = (first.scores - plain.scores).abs().max().item()
        if agree < 0.9:  # bf16 may flip a close argmax, not a tenth of the tokens
            raise RuntimeError(f"graph path and plain loop agree on {agree:.0%} of tokens only")
        out["graphs"] = sum(r.graph is not None for r in S._STEPS[model].values())
    return out


class GraphCount(L.Callback):
    """Graphs compiled in a stage's steady state: from the end of its ``warm_steps``-th step
    (the warm-up: the first steps, self-conditioning's no-grad pass) to the end of training."""

    def __init__(self, warm_steps: int = 2) -> None:
        self.warm_steps = warm_steps
        self.start: int | None = None
        self.after_warmup: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warm_steps:
            self.start = compiled_graphs()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.start is not None:
            self.after_warmup = compiled_graphs() - self.start


def compiled_training(dev: torch.device, work: Path, backend: str = "inductor") -> dict[str, Any]:
    """The training check (see the module doc): tiny fixture data written under ``work``."""
    from bench.fixtures import write_fixture_data
    from codefusion.pipeline import CodeFusion
    from train.config import load_run_config
    from train.run import run_stage

    data = write_fixture_data(work / "data")
    # Four steps: the warm-up (steps 1-2), then the steady state (steps 3-4), where nothing may
    # compile. Every batch self-conditions, so the no-grad pass is traced in the warm-up too;
    # no validation (its eval-mode graphs are the same mechanism, and each costs a compile).
    stage = (
        "{max_steps: 4, batch_size: 8, val_every: 100, ckpt_every: 4, warmup_steps: 1, "
        "grad_clip: 1.0, ema_decay: 0.9, log_every: 1, val_fraction: 0.1, self_cond_prob: 1.0}"
    )
    cfg_path = work / "smoke.yaml"
    cfg_path.write_text(
        f"""
name: smoke
language: cf
out_dir: {work / "runs"}
data_dir: {data}
model: {{preset: tiny, code_len: 16}}
tokenizer: {{path: {work / "tok"}, vocab_size: 300, languages: [cf]}}
accelerator: {"gpu" if dev.type == "cuda" else "cpu"}
devices: 1
precision: bf16-mixed
compile: true
compile_backend: {backend}
pretrain: {stage}
finetune: {stage}
"""
    )
    cfg = load_run_config(cfg_path)
    export, after = None, {}
    for name in ("pretrain", "finetune"):
        count = GraphCount()
        export = run_stage(cfg, name, init_from=export, progress=False, callbacks=[count])
        after[name] = count.after_warmup
    if any(n != 0 for n in after.values()):
        raise RuntimeError(f"graphs compiled after the warm-up: {after}")
    pre = CodeFusion.from_pretrained(work / "runs" / "smoke" / "pretrain" / "model", dev)
    cf = CodeFusion.from_pretrained(export, dev)  # the strict loader
    if any(k.startswith("_orig_mod") for k in cf.model.state_dict()):
        raise RuntimeError("compiled weight names in the export")
    moved = any(
        not torch.equal(v, cf.model.state_dict()[k]) for k, v in pre.model.state_dict().items()
    )
    # The plain sampler: the sampling check captured the graph path already, and compiling
    # it again for this model would double the smoke's longest wait.
    top = cf.generate("cells greater than 5", k=2, steps=4, fast=False)
    return {
        "compile_backend": backend,
        "precision": "bf16-mixed",
        "graphs_after_warmup": after,
        "finetune_moved_weights": moved,
        "generated": [c.code for c in top],
    }
