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
    from eval.harness import run_eval

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = load_generator(args.model, device=device)
    examples = _examples(args)
    options = {
        "num_draws": args.draws,
        "steps": args.steps,
        "clamp": args.clamp,
        "syntax_rank": args.syntax_rank,
        "length": args.length,
        "length_candidates": args.length_candidates,
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


def _examples(args: argparse.Namespace) -> list:
    """The test split, or the held-out share of the train split that training validated on."""
    from codefusion.data import load_benchmark

    if args.split == "test":
        examples = load_benchmark(args.benchmark, "test", args.data)[0]
    else:
        from train.data import holdout_examples

        train = load_benchmark(args.benchmark, "train", args.data)[0]
        examples = holdout_examples(
            train, args.holdout_fraction, args.holdout_seed, args.holdout_by, args.benchmark
        )[1]
    return examples[: args.limit] if args.limit else examples


def _diagnose(args: argparse.Namespace) -> int:
    import json

    import torch

    from codefusion.auto import load_generator
    from codefusion.pipeline import CodeFusion
    from eval.diagnose import generation_diagnostics, model_diagnostics_on

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = load_generator(args.model, device=device)
    examples = _examples(args)
    out: dict = {"split": args.split, "n": len(examples)}
    if isinstance(gen, CodeFusion):
        out["model"] = model_diagnostics_on(gen, examples, seed=args.seed)
    options = {"num_draws": args.draws, "steps": args.steps}
    if isinstance(gen, CodeFusion) and args.length:
        options["length"] = args.length
    options = {k: v for k, v in options.items() if v is not None}
    out["generation"] = generation_diagnostics(
        gen, examples, args.benchmark, seed=args.seed, progress=True, **options
    )
    print(json.dumps(out, indent=2))
    return 0


def _add_split_args(r: argparse.ArgumentParser) -> None:
    r.add_argument(
        "--split",
        choices=["test", "heldout"],
        default="test",
        help="test split, or the held-out share of the train split (choose settings on it)",
    )
    r.add_argument(
        "--holdout-fraction", type=float, default=0.1, help="held-out share (as in training)"
    )
    r.add_argument("--holdout-seed", type=int, default=0, help="the training run's seed")
    r.add_argument("--holdout-by", choices=["code", "row"], default="code")


def _ablation(args: argparse.Namespace) -> int:
    from eval.ablation import run_plan

    table = run_plan(Path(args.plan), Path(args.out), args.only, args.data)
    print(table.read_text())
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
    r.add_argument(
        "--length",
        choices=["free", "predicted"],
        help="CodeFusion: end position from the length head (predicted) or left to N (free)",
    )
    r.add_argument(
        "--length-candidates", type=int, help="predicted lengths: how many top lengths to draw"
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--limit", type=int, help="only the first N test items (smoke runs)")
    _add_split_args(r)
    r.add_argument("--batch-size", type=int, default=32, help="prompts per generation batch")
    r.add_argument(
        "--codebertscore", help="local CodeBERT(-python) model directory for CodeBERTScore"
    )
    r.add_argument("--device", help="cpu or cuda")
    r.set_defaults(func=_run)
    dg = sub.add_parser(
        "diagnose",
        help="why a model generates well or badly: D on clean L(y), x0_hat accuracy by step, "
        "length and validity of samples",
    )
    dg.add_argument("--model", required=True, help="model directory")
    dg.add_argument("--benchmark", required=True, choices=["cf", "bash", "python"])
    dg.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    dg.add_argument("--draws", type=int, help="noise draws per prompt (default 2k)")
    dg.add_argument("--steps", type=int, default=100, help="denoising steps (default 100)")
    dg.add_argument("--length", choices=["free", "predicted"])
    dg.add_argument("--seed", type=int, default=0)
    dg.add_argument("--limit", type=int, help="only the first N items")
    dg.add_argument("--device", help="cpu or cuda")
    _add_split_args(dg)
    dg.set_defaults(func=_diagnose)
    ab = sub.add_parser(
        "ablation",
        help="train and score a plan of configurations (eval/ablation.py), one table",
    )
    ab.add_argument("plan", help="ablation plan (YAML), e.g. configs/ablation-cf-small.yaml")
    ab.add_argument("--out", required=True, help="results folder")
    ab.add_argument("--only", nargs="+", help="run only these rows (others: table only)")
    ab.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    ab.set_defaults(func=_ablation)
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
