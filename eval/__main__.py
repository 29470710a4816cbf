"""`python -m eval run ...` scores a model on a benchmark; `python -m eval tables ...` combines."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from codefusion.errors import UserError


def _run(args: argparse.Namespace) -> int:
    import torch

    from codefusion.auto import load_generator
    from codefusion.data import load_benchmark
    from eval.harness import run_eval

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = load_generator(args.model, device=device)
    examples, report = load_benchmark(args.benchmark, "test", args.data)
    if args.limit:
        examples = examples[: args.limit]
    options = {
        "num_draws": args.draws,
        "steps": args.steps,
        "clamp": args.clamp,
        "syntax_rank": args.syntax_rank,
    }
    if args.mode:
        options["mode"] = args.mode
    options = {k: v for k, v in options.items() if v not in (None, False)}
    out = Path(args.out or f"results/{args.system or Path(args.model).name}/{args.benchmark}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation warnings per prompt would flood the bar
        m = run_eval(
            gen,
            args.benchmark,
            examples,
            out,
            system=args.system or Path(args.model).parent.name or "model",
            k=args.k,
            batch_size=args.batch_size,
            codebertscore=args.codebertscore,
            seed=args.seed,
            **options,
        )
    print((out / "table.md").read_text())
    print(
        f"top-1 {m['top1']:.1f}  top-3 {m['top3']:.1f}  top-5 {m['top5']:.1f}  ({m['n']} items) -> {out}"
    )
    return 0


def _tables(args: argparse.Namespace) -> int:
    from eval.tables import combined_markdown, load_results, quality_diversity_plot

    results = load_results([Path(d) for d in args.results])
    md = combined_markdown(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)
    print(md)
    if args.plot:
        quality_diversity_plot(results, Path(args.plot))
        print(f"plot -> {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval",
        description="Evaluate CodeFusion (or the autoregressive baseline) on the paper's benchmarks.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="generate top-k for a test split and score it")
    r.add_argument("--model", required=True, help="model directory")
    r.add_argument("--benchmark", required=True, choices=["cf", "bash", "python"])
    r.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    r.add_argument("--out", help="output folder (default results/<system>/<benchmark>)")
    r.add_argument("--system", help="system name in the tables (default: the run's name)")
    r.add_argument("--k", type=int, default=5)
    r.add_argument("--draws", type=int, help="noise draws / samples per prompt (default 2k)")
    r.add_argument("--steps", type=int, help="denoising steps (default all T)")
    r.add_argument("--clamp", action="store_true", help="clamping trick (CodeFusion)")
    r.add_argument("--syntax-rank", choices=["python", "bash", "cf"], help="parse-first ranking")
    r.add_argument(
        "--mode", choices=["beam", "sample"], help="autoregressive baseline: beam or sampling"
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--limit", type=int, help="only the first N test items (smoke runs)")
    r.add_argument("--batch-size", type=int, default=32, help="prompts per generation batch")
    r.add_argument(
        "--codebertscore", help="local CodeBERT(-python) model directory for CodeBERTScore"
    )
    r.add_argument("--device", help="cpu or cuda")
    r.set_defaults(func=_run)
    t = sub.add_parser("tables", help="combine result folders into one table and a plot")
    t.add_argument(
        "results", nargs="+", help="result folders (each with metrics.json, or parents of them)"
    )
    t.add_argument("--out", default="results/tables.md")
    t.add_argument("--plot", help="PNG path for the quality-vs-diversity plot")
    t.set_defaults(func=_tables)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
