"""One budgeted run: train both stages of a benchmark's paper config and evaluate it, inside a
share of a wall-clock budget (bench/budget.py plans it), writing compact results.

The benchmark's paper config (``configs/<benchmark>-paper.yaml``: the training recipe, batch
sizes, warm-up fraction) is read with the budgeted run's overrides; the evaluation's cost is
measured first on the untrained model (sampling costs the same whatever the weights); each
stage is sized from its own measured throughput (bench/stage_planner.py); the evaluation takes
the largest number of sampling steps that fits (the paper's 1200 where the time allows). The
result folder gets (bench/outputs.py): ``metrics.json``, ``table.md``, ``predictions.jsonl``
(eval/harness.py) and ``run.json`` (command, commit, device, versions, budget, per stage the
planned and run steps, tokens/s and MFU, the evaluation's steps and items, the sampler's
compile time, whether it ended inside its budget). Weights stay in a work folder.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.budget import EVAL_LADDER, Budget, BudgetError, EvalPlan
from bench.bundle import PYTHON_CORPUS
from bench.environment import REPO
from bench.eval_plan import (
    EVAL_PROBE_STEPS,
    evaluate,
    max_steps,
    plan_from_probe,
    probe_eval,
    write_reserve,
)

log = logging.getLogger("bench.reproduce")

BASELINE = "t5-baseline"
MASKED = "masked"
SMOKE_PROBE_STEPS = (1, 2)  # the smoke's: its paths, not its timings, matter
SMOKE_CPU_BATCH = 8


def build_config(args: argparse.Namespace, data: Path, work: Path, smoke: bool, dev):
    """The benchmark's paper config with the budgeted run's overrides (then ``--set``'s):
    the requested size and architecture, the run folder under ``work``, no validation and no
    checkpoints (nothing of the run is kept but the export), and a ``max_steps`` that the
    planner replaces once it has measured the stage's speed. Returns ``(cfg, warm-up fraction
    of each stage)``: the config's own warm-up over its own step count, kept at the planned
    step count."""
    from train.config import RunConfigError, load_run_config

    path = args.config or REPO / "configs" / f"{args.benchmark}-paper.yaml"
    if not Path(path).is_file():
        raise RunConfigError(f"config file {path} not found")
    base = load_run_config(path)
    if base.language != args.benchmark:
        raise RunConfigError(f"{path} is a {base.language} config, not {args.benchmark}")
    fractions = {
        stage: min(1.0, st.warmup_steps / st.max_steps)
        for stage in ("pretrain", "finetune")
        if (st := getattr(base, stage)) is not None
    }
    sets = [f"model.preset={args.size}", f"out_dir={work / 'runs'}", f"data_dir={data}"]
    if args.architecture != "codefusion":
        sets.append(f"model.architecture={args.architecture}")
    corpus = data / PYTHON_CORPUS
    if base.python_corpus is None and corpus.is_file():
        sets.append(f"python_corpus={corpus}")
    if args.seed is not None:
        sets.append(f"seed={args.seed}")
    if dev.type == "cpu":
        sets.append("accelerator=cpu")
    for stage in fractions:
        # Huge until the planner sets it (the trainer would otherwise stop at the config's);
        # no validation (limit_val_batches 0), no held-out rows or generation, the last step
        # exported (the config's `export: best` selects by that generation); checkpoints are off
        # in the Trainer itself (run_stage(checkpoints=False)).
        sets += [
            f"{stage}.max_steps={10**9}",
            f"{stage}.val_batches=0",
            f"{stage}.val_generate=0",
            f"{stage}.val_fraction=0",  # nothing is validated: every training row is trained on
            f"{stage}.export=last",
        ]
        st = getattr(base, stage)
        if dev.type == "cpu":  # data workers would take the cores the model trains on
            sets.append(f"{stage}.num_workers={min(st.num_workers, 1)}")
        if smoke and dev.type == "cpu":
            sets.append(f"{stage}.batch_size={min(st.batch_size, SMOKE_CPU_BATCH)}")
    cfg = load_run_config(path, sets + list(args.overrides))
    suffix = {BASELINE: "-ar", MASKED: "-masked"}.get(args.architecture, "")
    cfg.name = f"{args.benchmark}-{args.size}{suffix}"
    return cfg, fractions


def train_stages(
    cfg,
    fractions: dict[str, float],
    budget: Budget,
    end: float,
    progress: bool,
    peak: float | None,
    cap: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Both stages, each sized by a StagePlanner to its share (the split's ratio) of the time
    left before ``end``; returns the final export and each stage's report. ``cap``: at most
    that many steps per stage (the smoke mode)."""
    from bench.stage_planner import StagePlanner
    from codefusion.flops import train_step_flops
    from train.run import run_stage

    stages = [s for s in ("pretrain", "finetune") if getattr(cfg, s) is not None]
    reports: dict[str, Any] = {}
    export: Path | None = None
    for stage in stages:
        st = getattr(cfg, stage)
        start = budget.clock()
        deadline = budget.phase_deadline(stage, stages, end)
        share = deadline - start
        planner = StagePlanner(
            deadline,
            fractions[stage],
            st.batch_size,
            # compiled modules compile at their first steps (and again for new prompt widths)
            warm_steps=1 if cap else 6 if cfg.compile else 3,
            probe_steps=1 if cap else 5,
            probe_seconds=0.0 if cap else min(10.0, max(1.0, 0.05 * share)),
            end_reserve_s=2.0 + 0.02 * share,
            cap=cap,
            flops=train_step_flops,
            peak_flops=peak,
            clock=budget.clock,
        )
        export = run_stage(
            cfg,
            stage,
            init_from=export,
            resume=False,
            progress=progress,
            callbacks=[planner],
            checkpoints=False,
            max_time=deadline - budget.clock(),
        )
        reports[stage] = {
            "budget_s": round(share, 2),
            "batch_size": st.batch_size,
            **planner.report,
            "wall_s": round(budget.clock() - start, 2),
        }
    assert export is not None
    return export, reports


def run_pipeline(
    cfg,
    fractions: dict[str, float],
    budget: Budget,
    dev,
    data: Path,
    out: Path,
    system: Callable[[EvalPlan], str],
    batch_size: int,
    progress: bool,
    peak: float | None,
    cap: int | None = None,
    limit: int | None = None,
    ladder=EVAL_LADDER,
    probe_steps: tuple[int, int] = EVAL_PROBE_STEPS,
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Both stages and the evaluation: returns (stages, eval, parameters).

    The evaluation's cost is measured first, on the untrained model the evaluation will use
    (its weights are loaded in place after training, so the sampler's compiled CUDA graphs
    are captured once): sampling costs the same whatever the weights, and the untrained
    baseline never emits its end token (beam search's worst case). The split's evaluation
    share (of the time left now) is a cap: what the planned evaluation does not need goes to
    training, in the split's ratio of the stages. After training the evaluation is planned
    again, from the same measurements, into the time actually left."""
    from codefusion.data import load_benchmark
    from codefusion.generator import load_weights
    from train.run import build_generator, ensure_tokenizer

    tok = ensure_tokenizer(cfg)
    gen = build_generator(cfg, tok).to(dev)  # eval mode; random weights until training ends
    examples = load_benchmark(cfg.language, "test", data)[0]
    total = len(examples)
    examples = examples[:limit] if limit else examples
    stages = [s for s in ("pretrain", "finetune") if getattr(cfg, s) is not None]
    t0 = budget.clock()
    weights = sum(budget.split[p] for p in (*stages, "eval"))
    cap_s = max(0.0, budget.left()) * budget.split["eval"] / weights  # the eval's share
    # The probe is timed in the eval's share (it is the evaluation's warm-up).
    probe = probe_eval(
        gen,
        cfg.language,
        examples,
        batch_size,
        probe_steps,
        share_s=cap_s,
    )
    spent = budget.clock() - t0
    keep = write_reserve(len(examples))
    preplan = plan_from_probe(
        probe, len(examples), batch_size, cap_s - spent - keep, max_steps(gen), ladder
    )
    reserve = max(0.0, cap_s - spent)
    if preplan.complete:
        reserve = min(reserve, preplan.predicted_s + keep)
    log.info(
        "evaluation pre-plan: %s, predicted %.0f s; %.0f s of the %.0f s share reserved",
        preplan.note,
        preplan.predicted_s,
        reserve,
        cap_s,
    )
    final, stage_reports = train_stages(
        cfg, fractions, budget, budget.deadline - reserve, progress, peak, cap
    )
    load_weights(gen.model, final, dev)  # in place: graphs and buffers stay valid
    gen.model.eval()
    ev = evaluate(
        gen,
        examples,
        total,
        cfg.language,
        data,
        out,
        system,
        budget,
        batch_size,
        progress,
        probe,
        ladder,
    )
    ev["preplan"] = {
        "steps": preplan.steps,
        "items": preplan.items,
        "predicted_s": round(preplan.predicted_s, 2),
        "share_s": round(cap_s, 2),
        "reserved_s": round(reserve, 2),
        "seconds": round(spent, 2),
        "probe": probe,
    }
    return stage_reports, ev, gen.num_parameters()


def run_config(args: argparse.Namespace, cfg, fractions: dict[str, float]) -> dict[str, Any]:
    return {
        "path": str(args.config or f"configs/{args.benchmark}-paper.yaml"),
        "overrides": list(args.overrides),
        "seed": cfg.seed,
        "precision": cfg.precision,
        "compile": cfg.compile,
        "code_len": cfg.model.get("code_len"),
        "warmup_fraction": fractions,
        "python_corpus": cfg.python_corpus or "built from this Python's standard library",
        "tokenizer": cfg.tokenizer.path,
    }


def _work_dir(args: argparse.Namespace) -> tuple[Path, bool]:
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        return args.work, False
    return Path(tempfile.mkdtemp(prefix="codefusion-reproduce-")), True


MIN_BUDGET_S = 20.0  # below this not even a tiny model trains and evaluates


def budgeted_run(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """One budgeted run as ``args`` say (bench/reproduce.py's flags): setup, both stages, the
    evaluation, the four result files in ``args.out``; returns run.json's content."""
    import json

    import torch

    from bench.environment import command_line, git_info, peak_flops, versions
    from bench.outputs import finish
    from codefusion.data import load_benchmark, resolve_data_dir
    from train.run import ensure_tokenizer

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = resolve_data_dir(args.data)
    load_benchmark(args.benchmark, "test", data)  # a missing or malformed file: error now
    env = versions(dev)
    peak = peak_flops(env["device"], dev.type, args.peak_tflops)
    work, temporary = _work_dir(args)
    try:
        cfg, fractions = build_config(args, data, work, smoke=False, dev=dev)
        ensure_tokenizer(cfg)  # trained here (seconds) when the config's folder has none
        setup_s = budget.elapsed()
        if budget.left() < 0.5 * MIN_BUDGET_S:
            raise BudgetError(
                f"the setup took {setup_s:.0f} s of the {budget.seconds:.0f} s budget: too little "
                "is left to train and evaluate; give a larger budget"
            )
        args.out.mkdir(parents=True, exist_ok=True)
        size = {BASELINE: "T5 baseline", MASKED: "Masked diffusion"}.get(
            args.architecture, "CodeFusion"
        )
        minutes = budget.seconds / 60

        def system(plan: EvalPlan) -> str:
            how = "beam" if plan.steps is None else f"{plan.steps} steps"
            return f"{size} {args.size} ({minutes:g}-min budget, {how})"

        stages, ev, params = run_pipeline(
            cfg, fractions, budget, dev, data, args.out, system, args.eval_batch_size,
            not args.no_progress, peak,
        )  # fmt: skip
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    run = {
        "command": command_line(),
        "git": git_info(),
        "environment": {**env, "peak_tflops": None if peak is None else peak / 1e12},
        "benchmark": args.benchmark,
        "system": json.loads((args.out / "metrics.json").read_text())["system"],
        "architecture": args.architecture,
        "preset": args.size,
        "parameters": params,
        "config": run_config(args, cfg, fractions),
        "budget": {
            "minutes": minutes,
            "seconds": budget.seconds,
            "split": budget.split,
            "planned_deadline_s": round(budget.deadline - budget.start, 2),
            "rule": "setup first; the evaluation's share is a cap (its cost, the sampler's "
            "compilation included, is measured on the untrained model before training, and what "
            "it does not need goes to training); the stages share the rest in the split's "
            "ratio; the margin is never planned",
        },
        "setup_s": round(setup_s, 2),
        "stages": stages,
        "eval": ev,
    }
    finish(run, args.out, budget)
    return run
