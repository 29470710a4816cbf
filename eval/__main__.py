"""`python -m eval run ...` scores a model on a benchmark; `python -m eval rescore ...` scores
saved predictions again after a metric changed; `python -m eval tables ...` combines."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from codefusion.errors import UserError

if TYPE_CHECKING:
    from codefusion.data import Example
    from eval.harness import Nl2BashSubset


def _run(args: argparse.Namespace) -> int:
    import torch

    from codefusion.auto import load_generator
    from codefusion.data import load_benchmark
    from eval.harness import run_eval

    examples, report = load_benchmark(args.benchmark, "test", args.data)
    if args.nl2bash_defined and args.benchmark != "bash":
        raise UserError("--nl2bash-defined applies to the bash benchmark only")
    nl2bash = _nl2bash_subset(args) if args.benchmark == "bash" else None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = load_generator(args.model, device=device)
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
            nl2bash=nl2bash,
            **options,
        )
    print((out / "table.md").read_text())
    _print_summary(m, out)
    return 0


def _nl2bash_subset(args: argparse.Namespace) -> Nl2BashSubset:
    """The items of Bash's NL2Bash-comparable figure; says so when the figure is omitted."""
    from eval.harness import find_nl2bash_subset

    subset = find_nl2bash_subset(args.data, args.nl2bash_defined)
    if subset.ids is None:
        print(f"note: NL2Bash-comparable figure omitted: {subset.source}", file=sys.stderr)
    return subset


def _print_summary(m: dict, out: Path) -> None:
    line = f"top-1 {m['top1']:.1f}  top-3 {m['top3']:.1f}  top-5 {m['top5']:.1f}"
    nb = m.get("nl2bash_comparable") or {}
    if "top1" in nb:
        line += f"  (NL2Bash-comparable: top-1 {nb['top1']:.1f}  top-5 {nb['top5']:.1f})"
    print(f"{line}  ({m['n']} items) -> {out}")


def _rescore(args: argparse.Namespace) -> int:
    from codefusion.data import load_benchmark
    from eval.harness import rescore
    from eval.tables import result_dirs

    splits: dict[str, list[Example]] = {}
    # A list asked for explicitly must exist, whatever the folders hold.
    nl2bash = _nl2bash_subset(args) if args.nl2bash_defined else None
    for d in result_dirs([Path(x) for x in args.results], "predictions.jsonl"):
        lang = _benchmark_of(d)
        if lang not in splits:
            splits[lang] = load_benchmark(lang, "test", args.data)[0]
            if lang == "bash" and nl2bash is None:
                nl2bash = _nl2bash_subset(args)
        m = rescore(d, splits[lang], nl2bash if lang == "bash" else None)
        _print_summary(m, d)
    return 0


def _benchmark_of(result_dir: Path) -> str:
    import json

    from codefusion.data import check_language

    path = result_dir / "metrics.json"
    try:
        benchmark = json.loads(path.read_text(encoding="utf-8")).get("benchmark")
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{path}: not the metrics.json of `python -m eval run`") from None
    return check_language(str(benchmark))


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


_NL2BASH_HELP = (
    "bash: IDs of the test items NL2Bash's official evaluation can score, for the "
    "NL2Bash-comparable figure (default: nl2bash-official-defined.json in the data folder; "
    "without it the figure is omitted)"
)


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
    r.add_argument("--nl2bash-defined", metavar="FILE", help=_NL2BASH_HELP)
    r.set_defaults(func=_run)
    s = sub.add_parser(
        "rescore",
        help="score saved predictions again with the current metrics (no generation)",
        description="Score the top-k saved in each result folder's predictions.jsonl again with "
        "the current metrics, without generating: rewrites the per-item verdicts in "
        "predictions.jsonl, metrics.json and table.md, keeping the run's system name, options "
        "and generation time. Needs the benchmark data the predictions were made on.",
    )
    s.add_argument(
        "results",
        nargs="+",
        help="result folders (each with predictions.jsonl and metrics.json, or parents of them)",
    )
    s.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    s.add_argument("--nl2bash-defined", metavar="FILE", help=_NL2BASH_HELP)
    s.set_defaults(func=_rescore)
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
