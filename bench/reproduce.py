"""One command per benchmark: train both stages, evaluate, and write compact results, inside a
wall-clock budget.

    python bench/reproduce.py --benchmark cf --preset paper --budget-minutes 9 --out DIR
    python bench/reproduce.py --benchmark cf --preset ar-paper --budget-minutes 3 --out DIR
    python bench/reproduce.py --smoke --benchmark cf --preset paper --out DIR

A GPU lease is short (30 minutes of device time, 10 per command, nothing kept between
commands, a few small files back), so one command does everything: it reads the benchmark's
paper config (``configs/<benchmark>-paper.yaml``: the training recipe, batch sizes, warm-up
fraction), pre-trains and fine-tunes with step counts planned from the throughput it measures
(bench/budget.py), evaluates top-1/3/5 on the whole test split at the largest number of sampling
steps that fits (the paper's 1200 where the budget allows), and writes to ``--out``:

    metrics.json       the harness's metrics (eval/harness.py): top-k, validity, diversity
    table.md           our numbers beside the paper's, metric variant named; the run's plan
    predictions.jsonl  top-5 per test item (with the verdicts; ``python -m eval rescore`` reads it)
    run.json           the command, git SHA, GPU, versions, budget and split, per stage the
                       planned and run steps, wall-clock, tokens/s and MFU; the evaluation's
                       step count, items and wall-clock; whether the run ended inside its budget

Nothing else: the weights stay in a temporary work folder that is deleted at the end.
``--preset ar-paper`` (or ``--preset paper --baseline``) runs the autoregressive T5 baseline
of the same size on the same config, data and budget rules; its evaluation is beam search.

``--smoke`` checks, in a minute or two, everything a GPU can break before real time is spent:
bench/smoke.py's checks (versions, Triton kernels against their references in fp32 and bf16,
a strict CUDA-graph capture, a compiled bf16 two-stage tiny run), the data folder (every
benchmark and snippet file, the NL2Bash list, bashlex, the scorers on gold), then a few steps
of each stage of the requested benchmark at the requested size for CodeFusion and the baseline
(the configs' batch sizes on a GPU: memory is checked too; on a CPU the tiny size and 8 rows,
the paper size taking minutes there), five test items each through the fast sampler with strict
graphs (a failed capture is an error), and the output
files. It writes ``smoke.json`` and exits 1 naming every failed check.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here: before the heavy imports

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

from bench.budget import (  # noqa: E402
    EVAL_LADDER,
    Budget,
    BudgetError,
    EvalPlan,
    choose_eval_steps,
    fit_cost,
    parse_split,
    plan_batches,
)
from bench.prepare_carry import DEST, PYTHON_CORPUS  # noqa: E402
from codefusion.errors import UserError  # noqa: E402

log = logging.getLogger("bench.reproduce")

BENCHMARKS = ("cf", "bash", "python")
SIZES = ("paper", "small", "tiny")  # CodeFusion presets; "ar-<size>": the baseline of that size
PRESETS = SIZES + tuple(f"ar-{s}" for s in SIZES)
BASELINE = "t5-baseline"
OUTPUTS = ("metrics.json", "table.md", "predictions.jsonl", "run.json")
MAX_OUTPUT_BYTES = 16 * 2**20  # what comes back from the GPU machine, per file
MIN_BUDGET_S = 20.0  # below this not even a tiny model trains and evaluates
# Peak dense bf16 FLOP/s of the GPUs the lease lends (MFU; null elsewhere unless given).
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0}
SMOKE_STEPS, SMOKE_ITEMS, SMOKE_SAMPLING_STEPS, SMOKE_CPU_BATCH = 3, 5, 4, 8
EVAL_PROBE_STEPS = (2, 20)  # the two step counts the evaluation's cost line is timed at
SMOKE_PROBE_STEPS = (1, 2)  # the smoke mode's: its paths, not its timings, matter


# --- settings ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/reproduce.py",
        description="Reproduce one benchmark inside a wall-clock budget: pre-train and fine-tune "
        "(steps planned from measured throughput), evaluate top-1/3/5 on the whole test split "
        "(at up to 1200 sampling steps, as many as fit), and write metrics.json, table.md, "
        "predictions.jsonl and run.json to --out. --smoke checks every GPU path in a minute or "
        "two first. See README: Reproducing on one GPU.",
    )
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS, help="cf, bash or python")
    p.add_argument(
        "--preset",
        default="paper",
        choices=PRESETS,
        help="model size: CodeFusion paper/small/tiny, or ar-<size> for the autoregressive "
        "baseline of that size (default paper)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="the autoregressive T5 baseline of the preset's size (same as --preset ar-<size>)",
    )
    p.add_argument(
        "--budget-minutes",
        type=float,
        help="wall-clock budget of the whole command, from its start (required unless --smoke)",
    )
    p.add_argument("--out", required=True, type=Path, help="results folder (created)")
    p.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    p.add_argument(
        "--config", type=Path, help="run config (default configs/<benchmark>-paper.yaml)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set pretrain.batch_size=256 (repeatable)",
    )
    p.add_argument(
        "--split",
        help="budget shares of pre-training, fine-tuning, evaluation and the unplanned margin "
        "(default 45,25,25,5; bench/budget.py says why)",
    )
    p.add_argument(
        "--eval-batch-size", type=int, default=32, help="test prompts per generation batch"
    )
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if any")
    p.add_argument(
        "--peak-tflops",
        type=float,
        help="the GPU's dense bf16 peak for MFU (default: 989 on an H100 SXM or H200)",
    )
    p.add_argument("--seed", type=int, help="default: the config's")
    p.add_argument(
        "--no-compile-sampler",
        action="store_true",
        help="CUDA-graph sampler without torch.compile (saves its compile time per shape)",
    )
    p.add_argument(
        "--work", type=Path, help="keep the run folders (weights) here instead of a temporary one"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="check every GPU path, the data and a few steps of both systems; writes smoke.json",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    args = p.parse_args(argv)
    args.architecture = "codefusion"
    args.size = args.preset
    if args.preset.startswith("ar-"):
        args.size, args.architecture = args.preset[3:], BASELINE
    if args.baseline:
        args.architecture = BASELINE
    if args.budget_minutes is None and not args.smoke:
        p.error("--budget-minutes is required (or --smoke)")
    if args.eval_batch_size < 1:
        p.error("--eval-batch-size must be positive")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device is available")
    return args


def command_line() -> str:
    return shlex.join([Path(sys.executable).name, *sys.argv])


def git_info() -> dict[str, Any]:
    """The checkout's commit; on a copy without ``.git`` (the GPU machine's), the one
    ``bench/prepare_carry.py`` wrote into ``.carry/source.json``, said so."""
    import subprocess

    def git(*a: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *a], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    sha = git("rev-parse", "HEAD")
    if sha:
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"sha": sha, "dirty": bool(status), "source": "git"}
    source = REPO / DEST / "source.json"
    try:
        d = json.loads(source.read_text(encoding="utf-8"))
        return {"sha": d.get("git_sha"), "dirty": d.get("dirty"), "source": str(source)}
    except (OSError, ValueError):
        return {"sha": None, "dirty": None, "source": "unknown (no git, no .carry/source.json)"}


def environment(dev) -> dict[str, Any]:
    """Device and versions (bench/smoke.py's list, plus tokenizers)."""
    import tokenizers

    from bench.smoke import check_versions

    v = check_versions(dev, Path("."))
    v["tokenizers"] = tokenizers.__version__
    return v


def peak_flops(args: argparse.Namespace, device_name: str, dev) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if dev.type != "cuda":
        return None
    for key, tflops in PEAK_TFLOPS.items():  # most specific first
        if all(part in device_name for part in key.split()):
            return tflops * 1e12
    return None


def train_flops(model, batch_size: int, prompt_len: int) -> float:
    """Model FLOPs of one training step of either architecture (codefusion/model.py's count;
    its equivalent for the T5 baseline in codefusion/baseline.py)."""
    if hasattr(model, "estimate_flops"):
        return model.estimate_flops(batch_size, prompt_len)["train_step"]
    from codefusion.baseline import estimate_flops

    return estimate_flops(model, batch_size, prompt_len)["train_step"]


# --- the run config ---------------------------------------------------------------------------


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
    if args.architecture == BASELINE:
        sets.append(f"model.architecture={BASELINE}")
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
    suffix = "-ar" if args.architecture == BASELINE else ""
    cfg.name = f"{args.benchmark}-{args.size}{suffix}"
    return cfg, fractions


# --- training ---------------------------------------------------------------------------------


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
    from bench.budget import StagePlanner
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
            flops=train_flops,
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


# --- evaluation -------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], dev) -> tuple[Any, float]:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.monotonic()
    out = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return out, time.monotonic() - t0


def probe_eval(
    gen,
    lang: str,
    examples: list,
    batch_size: int,
    probe_steps=EVAL_PROBE_STEPS,
    share_s: float | None = None,
) -> dict[str, Any]:
    """Time the generation of the first batch (after warming every batch shape the evaluation
    will meet: on CUDA each is compiled and captured once) and the scoring of its items:
    CodeFusion's cost line (``per_batch_s`` + ``per_step_s`` x steps), the baseline's
    ``per_batch_s``, and ``score_per_item_s``. ``seconds``: what the timing itself took,
    warm-up excluded. Where the first batch says the second would take over a tenth of the
    evaluation's ``share_s``, the second is timed at 3x the first's steps instead."""
    from codefusion.sampling.graph import prompt_bucket
    from eval.harness import score
    from eval.scoring import SCORING

    dev = gen.device
    chunks = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    prompts = [[e.prompt for e in c] for c in chunks]
    takes_steps = gen.takes("steps")
    probe: dict[str, Any] = {"takes_steps": takes_steps}

    def generate(ps: list[str], **opts: Any):
        return gen.generate(ps, k=5, seed=0, allow_empty=True, **opts)

    t0 = time.monotonic()
    if takes_steps and dev.type == "cuda":
        # One sampler graph per (rows, prompt bucket): warm each before anything is timed.
        shapes: dict[tuple[int, int], list[str]] = {}
        for ps in prompts:
            width = gen.tokenizer.encode_prompts(ps, gen.max_prompt_len)[0].shape[1]
            shapes.setdefault((len(ps), prompt_bucket(width, gen.max_prompt_len)), ps)
        for ps in shapes.values():
            generate(ps, steps=2)
        probe["shapes"] = [list(k) for k in shapes]
    else:
        generate(prompts[0][:2], **({"steps": 2} if takes_steps else {}))
    probe["warmup_s"] = round(time.monotonic() - t0, 3)
    t0 = time.monotonic()
    first = prompts[0]
    if takes_steps:
        s1, s2 = probe_steps
        _, t1 = _timed(lambda: generate(first, steps=s1), dev)
        if share_s is not None and t1 * s2 / s1 > 0.1 * share_s:
            s2 = min(s2, 3 * s1)  # a slow device: a shorter second batch (CPU)
        cands, t2 = _timed(lambda: generate(first, steps=s2), dev)
        per_batch, per_step = fit_cost(t1, s1, t2, s2)
        probe.update(batch_s={str(s1): round(t1, 4), str(s2): round(t2, 4)})
        probe.update(per_batch_s=round(per_batch, 4), per_step_s=round(per_step, 6))
    else:
        cands, per_batch = _timed(lambda: generate(first), dev)
        probe["per_batch_s"] = round(per_batch, 4)
    t1 = time.monotonic()
    score(SCORING[lang], chunks[0], cands)
    probe["score_per_item_s"] = round((time.monotonic() - t1) / len(chunks[0]), 5)
    probe["seconds"] = round(time.monotonic() - t0, 3)
    return probe


def plan_from_probe(
    probe: dict[str, Any],
    n_items: int,
    batch_size: int,
    seconds: float,
    max_steps: int,
    ladder=EVAL_LADDER,
) -> EvalPlan:
    """The evaluation that fits ``seconds`` by ``probe``'s costs (:func:`probe_eval`):
    CodeFusion's largest step count of ``ladder`` (at most ``max_steps``, the model's T), the
    baseline's items."""
    per_batch, per_item = probe["per_batch_s"], probe["score_per_item_s"]
    if probe["takes_steps"]:
        return choose_eval_steps(
            n_items,
            batch_size,
            per_batch,
            probe["per_step_s"],
            per_item,
            seconds,
            ladder,
            max_steps,
        )
    return plan_batches(n_items, batch_size, per_batch, per_item, seconds)


def _max_steps(gen) -> int:
    """The model's T (sampling steps at most); 0 for the baseline, which takes none."""
    return int(gen.config.diffusion_steps) if gen.takes("steps") else 0


def evaluate(
    gen,
    examples: list,
    total: int,
    lang: str,
    data: Path,
    out: Path,
    system: Callable[[EvalPlan], str],
    budget: Budget,
    batch_size: int,
    progress: bool,
    probe: dict[str, Any],
    ladder=EVAL_LADDER,
) -> dict[str, Any]:
    """Plan the evaluation into the time left by ``probe``'s costs (measured before training:
    sampling costs the same whatever the weights) and run the harness (eval/harness.py:
    predictions.jsonl, metrics.json, table.md) with that deadline."""
    from eval.harness import find_nl2bash_subset, run_eval

    start = budget.clock()
    nl2bash = find_nl2bash_subset(data) if lang == "bash" else None
    end = budget.deadline - write_reserve(len(examples))
    plan = plan_from_probe(
        probe, len(examples), batch_size, end - budget.clock(), _max_steps(gen), ladder
    )
    log.info("evaluation: %s (predicted %.0f s)", plan.note, plan.predicted_s)
    options = {} if plan.steps is None else {"steps": plan.steps}
    t0 = budget.clock()
    # Every item is offered: the harness starts no batch that the last one's duration says
    # would end after the deadline, so a pessimistic plan (a probe timed under load) still
    # evaluates what fits.
    metrics = run_eval(
        gen,
        lang,
        examples,
        out,
        system(plan),
        batch_size=batch_size,
        progress=progress,
        nl2bash=nl2bash,
        deadline=end,
        **options,
    )
    done = metrics["n"]
    return {
        "steps": plan.steps,
        "ladder": list(ladder) if plan.steps is not None else None,
        "items": done,
        "test_items": total,
        "complete": done == total,
        "plan": plan.note,
        "items_planned": plan.items,
        "predicted_s": round(plan.predicted_s, 2),
        "generation_s": metrics["generation_seconds"],
        "run_s": round(budget.clock() - t0, 2),
        "wall_s": round(budget.clock() - start, 2),
        "batch_size": batch_size,
        "num_draws": "2k = 10" if plan.steps is not None else "k = 5 beams",
        "stopped_at_deadline": metrics.get("stopped_at_deadline"),
    }


def write_reserve(n_items: int) -> float:
    """Seconds kept after the evaluation for writing its files (scoring is in the plan)."""
    return 2.0 + 0.002 * n_items


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
        SMOKE_PROBE_STEPS if cap else EVAL_PROBE_STEPS,
        share_s=cap_s,
    )
    spent = budget.clock() - t0
    keep = write_reserve(len(examples))
    preplan = plan_from_probe(
        probe, len(examples), batch_size, cap_s - spent - keep, _max_steps(gen), ladder
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


# --- outputs ----------------------------------------------------------------------------------


def check_outputs(out: Path, names=OUTPUTS) -> dict[str, int]:
    """Bytes of each result file; a ``RuntimeError`` for a missing, oversized or unreadable
    one (metrics.json and run.json must hold their documented keys)."""
    sizes: dict[str, int] = {}
    for name in names:
        path = out / name
        if not path.is_file():
            raise RuntimeError(f"{path} was not written")
        sizes[name] = path.stat().st_size
        if sizes[name] > MAX_OUTPUT_BYTES:
            raise RuntimeError(f"{path} is {sizes[name] / 2**20:.1f} MiB, over 16 MiB")
    required = {
        "metrics.json": ("benchmark", "metric", "n", "top1", "top3", "top5", "options"),
        "run.json": RUN_KEYS,
    }
    for name, keys in required.items():
        if name in names:
            doc = json.loads((out / name).read_text(encoding="utf-8"))
            lacking = [k for k in keys if k not in doc]
            if lacking:
                raise RuntimeError(f"{out / name} lacks {', '.join(lacking)}")
    with (out / "predictions.jsonl").open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if not {"id", "prompt", "gold", "candidates", "correct"} <= set(rec):
                raise RuntimeError(f"{out / 'predictions.jsonl'}: a record lacks its keys")
    return sizes


RUN_KEYS = (
    "command",
    "git",
    "environment",
    "benchmark",
    "system",
    "architecture",
    "preset",
    "parameters",
    "config",
    "budget",
    "setup_s",
    "stages",
    "eval",
    "elapsed_s",
    "ended_inside_budget",
    "outputs",
)


def table_note(run: dict[str, Any]) -> str:
    """The lines table.md gets under the harness's table: what the budget bought."""
    b, ev = run["budget"], run["eval"]
    stages = []
    for name, label in (("pretrain", "pre-training"), ("finetune", "fine-tuning")):
        st = run["stages"].get(name)
        if st:
            tps = st.get("tokens_per_s")
            mfu = st.get("mfu")
            stages.append(
                f"{label} {st['steps']:,} steps of batch {st['batch_size']}"
                + (
                    f" ({st['rows_per_step']:g} rows: the whole set)"
                    if st.get("rows_per_step") and st["rows_per_step"] < st["batch_size"]
                    else ""
                )
                + f" in {st['wall_s']:.0f} s"
                + (f" ({tps:,.0f} code tokens/s" if tps else " (")
                + (f", MFU {100 * mfu:.1f}%)" if mfu is not None else ")")
            )
    steps = f"at {ev['steps']} sampling steps" if ev["steps"] is not None else "by beam search"
    items = (
        f"all {ev['items']} test items"
        if ev["complete"]
        else f"the first {ev['items']} of {ev['test_items']} test items (no more fitted)"
    )
    inside = "inside" if run["ended_inside_budget"] else "OVER"
    split = "/".join(
        f"{100 * b['split'][k]:.0f}" for k in ("pretrain", "finetune", "eval", "margin")
    )
    return (
        f"\nBudgeted run (bench/reproduce.py, {run['environment']['device']}): "
        f"{b['minutes']:g}-minute budget, split pre-training/fine-tuning/evaluation/margin "
        f"{split}%; "
        f"{'; '.join(stages)}; evaluation of {items} {steps} in {ev['wall_s']:.0f} s; "
        f"{run['elapsed_s'] / 60:.1f} minutes in all, {inside} the budget. "
        "The paper trains far longer: these numbers are what this budget reaches.\n"
    )


# --- the budgeted run -------------------------------------------------------------------------


def reproduce(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """The budgeted run: setup, both stages, the evaluation, the four result files."""
    import torch

    from codefusion.data import load_benchmark, resolve_data_dir
    from train.run import ensure_tokenizer

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = resolve_data_dir(args.data)
    load_benchmark(args.benchmark, "test", data)  # a missing or malformed file: error now
    if args.no_compile_sampler:
        os.environ["CODEFUSION_COMPILE_SAMPLER"] = "0"
    env = environment(dev)
    peak = peak_flops(args, env["device"], dev)
    work, temporary = _work_dir(args)
    try:
        cfg, fractions = build_config(args, data, work, smoke=False, dev=dev)
        ensure_tokenizer(cfg)  # trained here (seconds) when the config's folder has none
        setup_s = budget.elapsed()
        if budget.left() < 0.5 * MIN_BUDGET_S:
            raise BudgetError(
                f"the setup took {setup_s:.0f} s of the {budget.seconds:.0f} s budget: too little "
                "is left to train and evaluate; give a larger --budget-minutes"
            )
        args.out.mkdir(parents=True, exist_ok=True)
        size = "T5 baseline" if args.architecture == BASELINE else "CodeFusion"

        def system(plan: EvalPlan) -> str:
            how = "beam" if plan.steps is None else f"{plan.steps} steps"
            return f"{size} {args.size} ({args.budget_minutes:g}-min budget, {how})"

        stages, ev, params = run_pipeline(
            cfg,
            fractions,
            budget,
            dev,
            data,
            args.out,
            system,
            args.eval_batch_size,
            not args.no_progress,
            peak,
        )
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
            "minutes": args.budget_minutes,
            "seconds": budget.seconds,
            "split": budget.split,
            "planned_deadline_s": round(budget.deadline - budget.start, 2),
            "rule": "setup first; the evaluation's share is a cap (its cost is measured on the "
            "untrained model before training, and what it does not need goes to training); "
            "the stages share the rest in the split's ratio; the margin is never planned",
        },
        "setup_s": round(setup_s, 2),
        "stages": stages,
        "eval": ev,
    }
    finish(run, args.out, budget)
    return run


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


def finish(run: dict[str, Any], out: Path, budget: Budget) -> None:
    """table.md's note, then run.json (written last, with the elapsed time so far and the
    sizes of the other three files), then every file checked (:func:`check_outputs`)."""
    run["elapsed_s"] = round(budget.elapsed(), 2)
    run["ended_inside_budget"] = run["elapsed_s"] <= budget.seconds
    with (out / "table.md").open("a", encoding="utf-8") as f:
        f.write(table_note(run))
    run["outputs"] = {n: (out / n).stat().st_size for n in OUTPUTS if n != "run.json"}
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    check_outputs(out)


def _work_dir(args: argparse.Namespace) -> tuple[Path, bool]:
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        return args.work, False
    return Path(tempfile.mkdtemp(prefix="codefusion-reproduce-")), True


# --- smoke ------------------------------------------------------------------------------------


def smoke(args: argparse.Namespace) -> dict[str, Any]:
    """Every check of the smoke mode (see the module doc); ``ok`` False when one failed."""
    import torch

    from codefusion.data import resolve_data_dir

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    saved = {
        k: os.environ.get(k) for k in ("CODEFUSION_STRICT_GRAPHS", "CODEFUSION_COMPILE_SAMPLER")
    }
    os.environ["CODEFUSION_STRICT_GRAPHS"] = "1"  # a failed capture is an error, everywhere
    if args.no_compile_sampler:
        os.environ["CODEFUSION_COMPILE_SAMPLER"] = "0"
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"command": command_line(), "device": str(dev), "checks": {}}
    work, temporary = _work_dir(args)
    start = time.monotonic()
    try:

        def check(name: str, fn: Callable[[], dict[str, Any]]) -> None:
            t0 = time.monotonic()
            try:
                entry = {"status": "ok", **fn()}
            except Exception as e:  # every failure is reported, the other checks still run
                entry = {
                    "status": "failed",
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(limit=10),
                }
            entry["seconds"] = round(time.monotonic() - t0, 2)
            report["checks"][name] = entry
            print(f"smoke: {name:22s} {entry['status']:7s} {entry['seconds']:7.2f} s", flush=True)

        check("gpu_paths", lambda: _gpu_paths(work / "gpu", dev))
        data = resolve_data_dir(args.data)
        check("data", lambda: _data_check(data))
        for arch in ("codefusion", BASELINE):
            check(f"pipeline_{arch}", lambda arch=arch: _mini_run(args, arch, data, work, dev))
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
        for k, v in saved.items():  # as it was (the tests call this in-process)
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    report["environment"] = environment(dev)
    report["git"] = git_info()
    report["seconds"] = round(time.monotonic() - start, 2)
    report["failed"] = [n for n, c in report["checks"].items() if c["status"] == "failed"]
    report["ok"] = not report["failed"]
    (args.out / "smoke.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _gpu_paths(work: Path, dev) -> dict[str, Any]:
    """bench/smoke.py's checks; a failed one fails this check, named."""
    from bench.smoke import run_smoke

    r = run_smoke(work, str(dev))
    status = {k: v["status"] for k, v in r["checks"].items()}
    failed = {k: v.get("error") for k, v in r["checks"].items() if v["status"] == "failed"}
    if failed:
        raise RuntimeError("; ".join(f"{k}: {e}" for k, e in failed.items()))
    return {"checks": status, "versions": r["checks"]["versions"]}


def _data_check(data: Path) -> dict[str, Any]:
    """Every benchmark and snippet file loads, the NL2Bash list is there, bashlex imports, and
    each benchmark's scorer finds its first test items' gold correct."""
    import bashlex

    from codefusion.data import load_benchmark, load_snippets
    from eval.harness import find_nl2bash_subset
    from eval.scoring import SCORING

    out: dict[str, Any] = {"bashlex": getattr(bashlex, "__version__", "importable")}
    for lang in BENCHMARKS:
        train = load_benchmark(lang, "train", data)[0]
        test = load_benchmark(lang, "test", data)[0]
        corpus = data / PYTHON_CORPUS if lang == "python" else None
        snippets = load_snippets(lang, data, corpus if corpus and corpus.is_file() else None)
        gold = [SCORING[lang].correct(e.code, e)[0] for e in test[:SMOKE_ITEMS]]
        if not all(gold):
            raise RuntimeError(f"{lang}: the scorer rejects a gold answer of the first items")
        out[lang] = {"train": len(train), "test": len(test), "snippets": len(snippets)}
    subset = find_nl2bash_subset(data)
    if subset.ids is None:
        raise RuntimeError(f"NL2Bash-comparable figure unavailable: {subset.source}")
    out["nl2bash_defined"] = len(subset.ids)
    out["python_corpus"] = (
        "carried" if (data / PYTHON_CORPUS).is_file() else "built from the standard library"
    )
    return out


def _mini_run(args: argparse.Namespace, arch: str, data: Path, work: Path, dev) -> dict[str, Any]:
    """A few steps of each stage and five test items through the budgeted run's own code
    (evaluation pre-plan, stage planners, export, in-place reload, evaluation plan, harness,
    output files), at the requested size on a GPU (its memory is checked too) and at the tiny
    size on a CPU (the same code; the paper size takes minutes there); the fast sampler under
    strict graphs."""
    a = argparse.Namespace(**vars(args))
    a.architecture, a.budget_minutes = arch, 10.0
    if dev.type == "cpu":
        a.size = "tiny"
    budget = Budget(600.0)  # nominal: the step cap and the item limit end everything first
    run_dir = work / arch
    cfg, fractions = build_config(a, data, run_dir, smoke=True, dev=dev)
    env = environment(dev)
    peak = peak_flops(args, env["device"], dev)
    out = run_dir / "results"
    out.mkdir(parents=True)
    stages, ev, params = run_pipeline(
        cfg,
        fractions,
        budget,
        dev,
        data,
        out,
        lambda plan: f"smoke {arch} {args.size}",
        args.eval_batch_size,
        False,
        peak,
        cap=SMOKE_STEPS,
        limit=SMOKE_ITEMS,
        ladder=(SMOKE_SAMPLING_STEPS,),
    )
    run = {
        "command": command_line(),
        "git": git_info(),
        "environment": env,
        "benchmark": args.benchmark,
        "system": f"smoke {arch}",
        "architecture": arch,
        "preset": a.size,
        "parameters": params,
        "config": run_config(a, cfg, fractions),
        "budget": {"minutes": 10.0, "seconds": 600.0, "split": budget.split},
        "setup_s": 0.0,
        "stages": stages,
        "eval": ev,
    }
    finish(run, out, budget)
    for stage, st in stages.items():
        if st["steps"] != SMOKE_STEPS:
            raise RuntimeError(f"{stage} ran {st['steps']} steps, not {SMOKE_STEPS}")
    return {
        "preset": a.size,
        "parameters": params,
        "stages": {
            s: {k: st.get(k) for k in ("steps", "batch_size", "wall_s", "tokens_per_s", "mfu")}
            for s, st in stages.items()
        },
        "eval": {k: ev[k] for k in ("steps", "items", "wall_s")},
        "outputs": run["outputs"],
        "top5": json.loads((out / "metrics.json").read_text())["top5"],
    }


# --- main -------------------------------------------------------------------------------------


def _logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("codefusion", "train", "bench"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")


def main(argv: list[str] | None = None) -> int:
    # From the command line the budget counts from the interpreter's first import of this
    # file; called (tests) it counts from the call.
    start = T0 if argv is None else time.monotonic()
    args = parse_args(argv)
    _logging()
    from train.module import NonFiniteLossError

    try:
        if args.smoke:
            report = smoke(args)
            for name in report["failed"]:
                print(
                    f"error: smoke check {name} failed: {report['checks'][name]['error']}",
                    file=sys.stderr,
                )
            state = "ok" if report["ok"] else f"FAILED ({', '.join(report['failed'])})"
            print(f"smoke: {state} in {report['seconds']:.0f} s -> {args.out / 'smoke.json'}")
            return 0 if report["ok"] else 1
        seconds = args.budget_minutes * 60
        if not math.isfinite(seconds) or seconds < MIN_BUDGET_S:
            raise BudgetError(
                f"--budget-minutes {args.budget_minutes:g} is too small to run anything "
                f"(at least {MIN_BUDGET_S:g} seconds: setup, two stages, an evaluation)"
            )
        budget = Budget(seconds, parse_split(args.split), start=start)
        run = reproduce(args, budget)
    except (UserError, BudgetError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((args.out / "table.md").read_text(encoding="utf-8"))
    ev = run["eval"]
    print(
        f"{run['system']}: {run['elapsed_s']:.0f} s of {run['budget']['seconds']:.0f} s "
        f"({'inside' if run['ended_inside_budget'] else 'OVER'} the budget); evaluation: "
        f"{ev['plan']} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
