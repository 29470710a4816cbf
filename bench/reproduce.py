"""One command for a GPU slot: the smoke check, then budgeted runs and the speed benchmark, each
part's files complete on disk the moment it ends.

    python bench/reproduce.py --plan --budget-minutes 14 --out results/gpu      # a whole slot
    python bench/reproduce.py --benchmark cf --preset paper --budget-minutes 4 --out DIR
    python bench/reproduce.py --smoke --out DIR

``--plan`` runs, in this order (``--parts`` picks and orders others): the smoke check
(bench/smoke.py; a failed check stops the plan), then

    cf          CodeFusion on CF, paper preset: both stages and the evaluation (bench/budgeted.py)
    speed       the speed benchmark (bench/benchmark.py): training tokens/s and MFU, top-5
                latency at 1200 and 100 steps, eager fp32 against the optimised path
    cf-ar       the T5 baseline of the same size on CF
    cf-masked   the masked diffusion model of the same sizes on CF (codefusion/masked.py)
    bash        CodeFusion on Bash
    python      CodeFusion on Python

each part in ``OUT/<part>/``, with its share of the time left when it starts: the speed
benchmark a fixed :data:`SPEED_S`, reserved from the start; the trained parts the rest in the
ratio of their :data:`WEIGHTS` among the parts still to run. A part whose share is below its
minimum is skipped, said why; one that fails is reported and the plan goes on. ``plan.json``,
rewritten after every part, lists what ran, what was skipped and why; a slot cut short keeps
every finished part. A single run (``--benchmark``) is one such part with the whole budget.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here: before the heavy imports

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

from bench.budget import Budget, BudgetError, parse_split  # noqa: E402
from bench.budgeted import BASELINE, MASKED, MIN_BUDGET_S  # noqa: E402
from bench.smoke import write_json  # noqa: E402
from codefusion.errors import UserError  # noqa: E402

SIZES = ("paper", "small", "tiny")  # CodeFusion presets; "ar-<size>": the baseline of that size
PRESETS = SIZES + tuple(f"ar-{s}" for s in SIZES)
# Each part: (benchmark, architecture) of a budgeted run, or "speed".
PARTS: dict[str, tuple[str, str] | str] = {
    "cf": ("cf", "codefusion"),
    "speed": "speed",
    "cf-ar": ("cf", BASELINE),
    "cf-masked": ("cf", MASKED),
    "bash": ("bash", "codefusion"),
    "python": ("python", "codefusion"),
}
DEFAULT_PARTS = tuple(PARTS)
WEIGHTS = {"cf": 35.0, "cf-ar": 20.0, "cf-masked": 20.0, "bash": 20.0, "python": 15.0}
# The speed benchmark's cost hardly depends on the budget: its --quick run took 126 s on an H200
# (results/gpu/speed), compilation and CUDA-graph capture included. It is reserved as a fixed
# amount, and the trained parts share what is left in the ratio of their weights.
SPEED_S = 150.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/reproduce.py",
        description="Reproduce inside a wall-clock budget: --plan spends a whole GPU slot (smoke, "
        "then CF CodeFusion, the speed benchmark, the CF baseline, Bash, Python), --benchmark "
        "one budgeted run, --smoke the checks alone. Example: python bench/reproduce.py --plan "
        "--budget-minutes 14 --data .offline/data --out results/gpu",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", action="store_true", help="the whole slot (see the module doc)")
    mode.add_argument("--benchmark", choices=["cf", "bash", "python"], help="one budgeted run")
    mode.add_argument("--smoke", action="store_true", help="the smoke check only")
    p.add_argument("--out", required=True, type=Path, help="results folder (created)")
    p.add_argument("--budget-minutes", type=float, help="wall-clock budget from the start")
    p.add_argument("--parts", help=f"--plan's parts in order (default {','.join(DEFAULT_PARTS)})")
    p.add_argument("--preset", default="paper", choices=PRESETS,
                   help="model size (default paper); ar-<size>: the baseline of that size")  # fmt: skip
    p.add_argument("--baseline", action="store_true", help="--benchmark: the T5 baseline")
    p.add_argument("--masked", action="store_true", help="--benchmark: the masked diffusion model")
    p.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    p.add_argument(
        "--config", type=Path, help="run config (default configs/<benchmark>-paper.yaml)"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")  # fmt: skip
    p.add_argument("--split", help="shares of pre-training, fine-tuning, evaluation, margin "
                   "(default 45,25,25,5; bench/budget.py)")  # fmt: skip
    p.add_argument("--eval-batch-size", type=int, default=32, help="prompts per batch")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if any")
    p.add_argument("--peak-tflops", type=float, help="measured dense bf16 peak (default: spec)")
    p.add_argument("--seed", type=int, help="default: the config's")
    p.add_argument("--work", type=Path, help="keep the run folders (weights) here")
    p.add_argument("--no-smoke", action="store_true", help="--plan without the smoke check")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    args = p.parse_args(argv)
    args.size, args.architecture = args.preset, "codefusion"
    if args.preset.startswith("ar-") or args.baseline:
        args.size, args.architecture = args.preset.removeprefix("ar-"), BASELINE
    if args.masked:
        if args.architecture == BASELINE:
            p.error("--masked and the baseline (--baseline, ar-<size>) exclude each other")
        args.architecture = MASKED
    if not args.smoke and args.budget_minutes is None:
        p.error("--budget-minutes is required with --plan and --benchmark")
    if args.eval_batch_size < 1:
        p.error("--eval-batch-size must be positive")
    parts = (args.parts or ",".join(DEFAULT_PARTS)).split(",")
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"--parts: unknown {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    args.part_list = parts
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device is available")
    return args


def _smoke_opts(args: argparse.Namespace, out: Path) -> argparse.Namespace:
    return argparse.Namespace(
        out=out, device=args.device, data=args.data, benchmark=args.benchmark or "cf",
        preset=args.size, eval_batch_size=args.eval_batch_size, peak_tflops=args.peak_tflops,
        overrides=args.overrides,
    )  # fmt: skip


def run_part(name: str, args: argparse.Namespace, out: Path, seconds: float) -> dict[str, Any]:
    """One part of the plan in ``out``, inside ``seconds``; its summary."""
    what = PARTS[name]
    if what == "speed":
        cmd = [sys.executable, str(REPO / "bench" / "benchmark.py"), "--out", str(out)]
        cmd += ["--preset", args.size] + (["--device", args.device] if args.device else [])
        cmd += ["--quick"] if seconds < 2 * SPEED_S else []
        if args.peak_tflops:
            cmd += ["--peak-tflops", str(args.peak_tflops)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
        except subprocess.TimeoutExpired:
            return {"status": "stopped", "why": f"not done in its {seconds:.0f} s share"}
        if r.returncode != 0:
            return {"status": "failed", "why": (r.stderr.strip().splitlines() or ["?"])[-1]}
        return {"status": "done", "files": ["results.json", "results.md"]}
    from bench.budgeted import budgeted_run

    a = argparse.Namespace(**vars(args))
    a.benchmark, a.architecture, a.out = what[0], what[1], out
    run = budgeted_run(a, Budget(seconds, parse_split(args.split)))
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "status": "done",
        "top1/3/5": [round(metrics[k], 1) for k in ("top1", "top3", "top5")],
        "eval": run["eval"]["plan"],
        "ended_inside_budget": run["ended_inside_budget"],
        "files": sorted(run["outputs"]) + ["run.json"],
    }


def plan(args: argparse.Namespace, start: float) -> dict[str, Any]:
    """The slot: the smoke, then each part with its share; plan.json after every part."""
    from bench.environment import command_line, git_info

    total = args.budget_minutes * 60
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"command": command_line(), "git": git_info(), "budget_s": total}
    report["parts"] = {}

    def left() -> float:
        return total - (time.monotonic() - start)

    def record(name: str, entry: dict[str, Any]) -> None:
        report["parts"][name] = entry
        report["elapsed_s"] = round(time.monotonic() - start, 2)
        write_json(args.out / "plan.json", report)  # whole: a kill never leaves half a file
        print(f"plan: {name:8s} {entry['status']:8s} {entry.get('seconds', 0):7.1f} s  "
              f"{entry.get('why', '')}", flush=True)  # fmt: skip

    if not args.no_smoke:
        from bench.smoke import run_smoke

        t0 = time.monotonic()
        smoke = run_smoke(_smoke_opts(args, args.out / "smoke"))
        status = "done" if smoke["ok"] else "failed"
        why = "" if smoke["ok"] else f"failed checks: {', '.join(smoke['failed'])}"
        record("smoke", {"status": status, "why": why, "seconds": time.monotonic() - t0})
        if not smoke["ok"]:
            for name in args.part_list:
                record(name, {"status": "skipped", "why": "the smoke check failed"})
            return report
    for i, name in enumerate(args.part_list):
        rest = args.part_list[i:]
        if PARTS[name] == "speed":
            share = minimum = SPEED_S
            if left() < share:
                share = left()
        else:
            reserved = SPEED_S * sum(PARTS[p] == "speed" for p in rest)
            trained = sum(WEIGHTS[p] for p in rest if PARTS[p] != "speed")
            share = (left() - reserved) * 0.97 * WEIGHTS[name] / trained
            minimum = MIN_BUDGET_S
        if share < minimum:
            why = f"its share ({share:.0f} s) is below its minimum ({minimum:.0f} s)"
            record(name, {"status": "skipped", "why": why})
            continue
        t0 = time.monotonic()
        try:
            entry = run_part(name, args, args.out / name, share)
        except (UserError, BudgetError) as e:
            entry = {"status": "failed", "why": str(e)}
        except Exception as e:  # a part that breaks must not take the others with it
            entry = {"status": "failed", "why": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc(limit=6)}  # fmt: skip
        entry.update(share_s=round(share, 1), seconds=round(time.monotonic() - t0, 1))
        record(name, entry)
    report["ended_inside_budget"] = time.monotonic() - start <= total
    record("summary", {"status": "done", "seconds": time.monotonic() - start})
    return report


def _logging() -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("codefusion", "train", "bench"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    import lightning.pytorch  # noqa: F401  (importing it resets the level: import first)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # start-up chatter
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
            from bench.smoke import run_smoke

            report = run_smoke(_smoke_opts(args, args.out))
            for name in report["failed"]:
                err = report["checks"][name]["error"]
                print(f"error: smoke check {name} failed: {err}", file=sys.stderr)
            state = "ok" if report["ok"] else f"FAILED ({', '.join(report['failed'])})"
            print(f"smoke: {state} in {report['seconds']:.0f} s -> {args.out / 'smoke.json'}")
            return 0 if report["ok"] else 1
        seconds = args.budget_minutes * 60
        if not math.isfinite(seconds) or seconds < MIN_BUDGET_S:
            raise BudgetError(
                f"--budget-minutes {args.budget_minutes:g} is too small to run anything "
                f"(at least {MIN_BUDGET_S:g} seconds: setup, two stages, an evaluation)"
            )
        if args.plan:
            report = plan(args, start)
            ran = [n for n, p in report["parts"].items() if p["status"] == "done"]
            print(f"plan: {len(ran) - 1} parts done in {report['elapsed_s']:.0f} s of "
                  f"{seconds:.0f} s -> {args.out / 'plan.json'}")  # fmt: skip
            return 0
        from bench.budgeted import budgeted_run

        run = budgeted_run(args, Budget(seconds, parse_split(args.split), start=start))
    except (UserError, BudgetError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((args.out / "table.md").read_text(encoding="utf-8"))
    inside = "inside" if run["ended_inside_budget"] else "OVER"
    print(f"{run['system']}: {run['elapsed_s']:.0f} s of {run['budget']['seconds']:.0f} s "
          f"({inside} the budget); evaluation: {run['eval']['plan']} -> {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
