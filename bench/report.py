"""The benchmark's report: the environment it ran in, the targets judged, and results.md.

``results.json`` holds everything measured (bench/benchmark.py); :func:`markdown` renders it.
The targets are the issue's, for the paper preset on an H100; each latency target is judged at
the step count ``TARGET_STEPS`` names, read from the run's settings.
"""

from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

TARGETS = {
    "train_speedup_min": 3.0,  # optimised tokens/s >= 3x eager fp32
    "train_mfu_min": 0.35,  # on an H100, bf16 dense peak, at batch >= TARGET_MFU_BATCH
    "top5_full_max_s": 0.3,  # top-5 at all T steps
    "top5_full_speedup_min": 5.0,  # vs eager fp32
    "top5_respaced_max_s": 0.040,  # top-5 at TARGET_STEPS["respaced"] respaced steps
}
# The sampling runs the latency targets are judged on: "full" is all T steps of the preset
# (settings["diffusion_steps"]), "respaced" a respaced run of this many steps (the default
# --respaced of a full benchmark).
TARGET_STEPS = {"respaced": 100}
TARGET_MFU_BATCH = 512  # the issue: MFU at batch >= 512


def environment(args: argparse.Namespace, dev: torch.device) -> dict:
    """The run's date, command, commit, device and versions (bench/environment.py)."""
    from bench.environment import command_line, git_info, versions

    v = versions(dev)
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "git_sha": git_info()["sha"],
        "device": dev.type,
        "device_name": v["device"],
        **{k: v[k] for k in ("torch", "cuda", "triton", "python", "cpu_threads")},
    }


def check_targets(res: dict) -> dict:
    """The issue's targets; judged only for the paper preset on CUDA (null otherwise)."""
    settings = res["settings"]
    judged = res["environment"]["device"] == "cuda" and settings["preset"] == "paper"
    met: dict[str, bool | None] = dict.fromkeys(TARGETS)
    train, samp = res.get("training"), res.get("sampling")
    if judged and train:
        met["train_speedup_min"] = train["speedup"] >= TARGETS["train_speedup_min"]
        mfu = train["optimised"]["mfu"]
        if train["optimised"]["batch_size"] >= TARGET_MFU_BATCH:
            met["train_mfu_min"] = mfu is not None and mfu >= TARGETS["train_mfu_min"]
    if judged and samp:
        runs = samp["runs"]
        full = runs[0]
        if full["steps"] == settings["diffusion_steps"]:
            met["top5_full_max_s"] = full["optimised"]["median_s"] < TARGETS["top5_full_max_s"]
            met["top5_full_speedup_min"] = (
                full["speedup"]["optimised"] >= TARGETS["top5_full_speedup_min"]
            )
        for run in runs[1:]:
            if run["steps"] == TARGET_STEPS["respaced"]:
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
        mfu_note = (
            f"MFU against {st['peak_tflops']:g} TFLOP/s dense bf16 "
            f"({res['environment']['device_name']})."
            if st["peak_tflops"]
            else "MFU: no peak known for this device (CPU, or pass --peak-tflops)."
        )
        lines += [
            f"## Training (prompt {st['prompt_len']}, "
            f"code {train['tokens_per_step'] // opt_batch} tokens; "
            f"median of {st['train_steps']} steps after {st['train_warmup']} warm-up)",
            "",
            f"Model FLOPs per step (analytic, batch {opt_batch}): "
            f"{train['flops_per_step'] / 1e9:,.2f} GFLOP. {mfu_note}",
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
        if "profile" in train["optimised"]:
            from bench.profile_step import markdown as profile_lines

            lines += profile_lines(train["optimised"]["profile"], "optimised")
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
        if base:
            lines.append(
                f"| AR baseline of `{base['preset']}` size ({base['options']}, up to "
                f"{base['max_new_tokens']} tokens; no diffusion steps) | "
                + " | ".join([fmt_s(base["median_s"])] * len(samp["runs"]))
                + " |"
            )
        lines.append("")
        lines.append("Ratios in parentheses: reference latency / this path's latency.")
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
