"""The GPU smoke check: every GPU path of issue #19 exercised once, in about a minute.

    python bench/smoke.py --out DIR [--device cuda|cpu]

Writes ``DIR/smoke.json`` and exits 0 when no check failed. Checks, in order:

- ``versions``: torch, CUDA, triton, lightning, transformers, numpy, Python; the GPU's name;
- ``kernels`` (CUDA): each Triton kernel against its PyTorch reference, forward and backward,
  in fp32 and bf16, on sizes that are not multiples of the blocks and on strided inputs (the
  denoiser's shift/scale are slices of a [B, 9, D] tensor); the tolerances of
  tests/test_kernels.py;
- ``graph_capture`` (CUDA): the fast sampler's step (bf16 copy of N, compiled with inductor)
  captured as one CUDA graph under :func:`codefusion.sampling.graph.strict_graphs` (a failed capture
  is an error), its replay equal to the same step run without the graph, and a whole sampling
  call compared with the plain fp32 loop;
- ``training``: both stages on tiny fixture data (written here: no real data) with
  bf16-mixed, gradient clipping, EMA and ``compile: true``, then the export reloaded with the
  strict loader and used to generate (on CUDA through the graph path, strictly). On CPU the
  compile backend is ``eager`` (dynamo's tracing without code generation, for time) and
  bf16-mixed runs on CPU autocast.

On CPU the CUDA-only checks are ``skipped``, not failed (a CPU test runs this). The module
sits in bench/ beside the benchmark because it drives train/ (Lightning), which is not part of
the installed library; ``run_smoke`` is what a ``reproduce --smoke`` entry point calls.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

FP32_RTOL, BF16_TOL = 1e-4, 2e-2  # tests/test_kernels.py


class Skip(Exception):
    """A check that does not apply on this device."""


def _close(got: torch.Tensor, want: torch.Tensor, bf16: bool, what: str) -> float:
    got, want = got.double(), want.double()
    scale = want.abs().max().item()
    if bf16:
        rtol, atol = BF16_TOL, BF16_TOL * max(scale, 1.0)
    else:
        rtol, atol = FP32_RTOL, FP32_RTOL * scale
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
    return (got - want).abs().max().item()


# --- checks -----------------------------------------------------------------------------------


def check_versions(dev: torch.device, _work: Path) -> dict[str, Any]:
    import lightning
    import numpy
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.machine(),
        "bf16_supported": dev.type == "cuda" and torch.cuda.is_bf16_supported(),
    }


def check_kernels(dev: torch.device, _work: Path) -> dict[str, Any]:
    if dev.type != "cuda":
        raise Skip("Triton kernels run on CUDA (tests/test_kernels.py checks them on CPU)")
    return compare_kernels(dev)


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


def _tiny_codefusion(dev: torch.device):
    from codefusion.config import preset
    from codefusion.pipeline import CodeFusion, build_model
    from codefusion.tokenizer import CodeTokenizer, train_bpe
    from tests.fixtures import CF_CODES, CF_PROMPTS

    tok = CodeTokenizer(train_bpe((CF_CODES + CF_PROMPTS) * 20, vocab_size=300, min_frequency=1))
    torch.manual_seed(0)
    model = build_model(preset("tiny", code_len=16), tok)
    with torch.no_grad():  # random weights everywhere (the modulation starts at zero)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return CodeFusion(model, tok).to(dev)


def check_graph_capture(dev: torch.device, _work: Path) -> dict[str, Any]:
    if dev.type != "cuda":
        raise Skip("CUDA graphs need CUDA")
    return capture_and_compare(dev)


def capture_and_compare(dev: torch.device, backend: str = "inductor") -> dict[str, Any]:
    """The graph check itself (a CPU test runs it with a stand-in graph and backend eager)."""
    from codefusion.model import attention_mask
    from codefusion.sampling import SamplingOptions, ddim
    from codefusion.sampling import graph as S

    cf = _tiny_codefusion(dev)
    model, sched = cf.model, cf.schedule
    ids, mask, _ = cf.tokenizer.encode_prompts(["cells greater than 5"], 48)
    enc = model.encode(ids.to(dev), mask.to(dev)).repeat_interleave(10, 0).detach()
    out: dict[str, Any] = {}
    with torch.no_grad(), S.strict_graphs():
        S._STEPS.pop(model, None)
        fast = S.sample_graph(
            model,
            sched,
            enc,
            None,
            torch.Generator(device=dev).manual_seed(3),
            SamplingOptions(steps=8),
            use_graph=True,
            dtype=torch.bfloat16,
            compile_backend=backend,
        )
        (runner,) = S._STEPS[model].values()
        if runner.graph is None:
            raise RuntimeError("no CUDA graph was captured")
        out["compiled"] = runner.compiled
        if not runner.compiled:
            raise RuntimeError("the captured step is not compiled")
        # The replay against the function it captured, on the same inputs.
        x = torch.randn(
            runner.x.shape, device=dev, generator=torch.Generator(device=dev).manual_seed(1)
        )
        kv = runner.net.cross_kv(enc.to(torch.bfloat16))
        plan = ddim.StepPlan.build(sched, sched.timesteps(8), 0.0)
        results = []
        for replay in (True, False):
            runner.load(x, kv, None, None)
            runner.t.copy_(plan.t[2])
            runner.coef.copy_(plan.coef[2])
            runner.graph.replay() if replay else runner._run(model)
            results.append((runner.x.clone(), runner.x0.clone()))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        diffs = [(a - b).abs().max().item() for a, b in zip(*results, strict=True)]
        out["replay_vs_step_max_abs"] = max(diffs)
        plain = ddim.sample(
            model,
            sched,
            enc,
            None,
            torch.Generator(device=dev).manual_seed(3),
            SamplingOptions(steps=8, fast=False),
        )
        agree = (fast.tokens == plain.tokens).float().mean().item()
        out["tokens_equal_to_plain_fp32_loop"] = agree
        out["score_max_abs_diff"] = (fast.scores - plain.scores).abs().max().item()
        if agree < 0.9:  # bf16 may flip a close argmax, not a tenth of the tokens
            raise RuntimeError(f"graph path and plain loop agree on {agree:.0%} of tokens only")
        masked = attention_mask(torch.ones(10, enc.shape[1], dtype=torch.long, device=dev))
        S.sample_graph(
            model,
            sched,
            enc,
            masked,
            torch.Generator(device=dev).manual_seed(3),
            SamplingOptions(steps=8),
            use_graph=True,
            dtype=torch.bfloat16,
            compile_backend=backend,
        )
        out["graphs"] = sum(r.graph is not None for r in S._STEPS[model].values())
    return out


def check_training(dev: torch.device, work: Path) -> dict[str, Any]:
    from codefusion.pipeline import CodeFusion
    from codefusion.sampling.graph import strict_graphs
    from tests.fixtures import write_fixture_data
    from train.config import load_run_config
    from train.run import run

    data = write_fixture_data(work / "data")
    backend = "inductor" if dev.type == "cuda" else "eager"
    stage = (
        "{max_steps: 3, batch_size: 8, val_every: 3, val_batches: 1, ckpt_every: 3, "
        "warmup_steps: 1, grad_clip: 1.0, ema_decay: 0.9, log_every: 1, val_fraction: 0.1}"
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
    final = run(load_run_config(cfg_path), progress=False)
    pre = CodeFusion.from_pretrained(work / "runs" / "smoke" / "pretrain" / "model", dev)
    cf = CodeFusion.from_pretrained(final, dev)  # the strict loader
    names = list(cf.model.state_dict())
    if any(k.startswith("_orig_mod") for k in names):
        raise RuntimeError("compiled weight names in the export")
    moved = any(
        not torch.equal(v, cf.model.state_dict()[k]) for k, v in pre.model.state_dict().items()
    )
    with strict_graphs():  # on CUDA generate takes the graph path: it must capture
        top = cf.generate("cells greater than 5", k=2, steps=4)
    return {
        "compile_backend": backend,
        "precision": "bf16-mixed",
        "finetune_moved_weights": moved,
        "generated": [c.code for c in top],
    }


CHECKS: dict[str, Callable[[torch.device, Path], dict[str, Any]]] = {
    "versions": check_versions,
    "kernels": check_kernels,
    "graph_capture": check_graph_capture,
    "training": check_training,
}


def run_smoke(out: str | Path, device: str | None = None) -> dict[str, Any]:
    """Run every check on ``device`` (default: CUDA if present) and write ``out/smoke.json``.
    Returns the report: ``ok`` is False when a check failed (skipped ones do not count)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report: dict[str, Any] = {"device": str(dev), "checks": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smoke-", dir=out) as tmp:
        for name, check in CHECKS.items():
            t0 = time.perf_counter()
            work = Path(tmp) / name
            work.mkdir()
            try:
                entry = {"status": "ok", **check(dev, work)}
            except Skip as e:
                entry = {"status": "skipped", "reason": str(e)}
            except Exception as e:
                entry = {
                    "status": "failed",
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(limit=8),
                }
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            report["checks"][name] = entry
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["ok"] = all(c["status"] != "failed" for c in report["checks"].values())
    (out / "smoke.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="GPU smoke check of issue #19's paths")
    p.add_argument("--out", required=True, type=Path, help="folder for smoke.json")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if any")
    args = p.parse_args(argv)
    report = run_smoke(args.out, args.device)
    for name, c in report["checks"].items():
        why = c.get("error") or c.get("reason") or ""
        print(f"{name:14s} {c['status']:8s} {c['seconds']:7.2f} s  {why}")
    print(f"{'total':14s} {'ok' if report['ok'] else 'FAILED':8s} {report['seconds']:7.2f} s")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
