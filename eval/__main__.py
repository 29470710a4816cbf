"""`python -m eval run ...` scores a model on a benchmark; `python -m eval rescore ...` scores
saved predictions again after a metric changed; `python -m eval tables ...` combines."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from codefusion.errors import UserError
from codefusion.options import Parser, positive_int

if TYPE_CHECKING:
    from codefusion.data import Example
    from codefusion.scoring.evaluate import Nl2BashSubset


DIAGNOSE_STEPS = 100  # `diagnose`'s sampling steps for a diffusion model


def _run(args: argparse.Namespace) -> int:

    from codefusion.auto import load_generator
    from eval.harness import run_eval

    if args.nl2bash_defined and args.benchmark != "bash":
        raise UserError("--nl2bash-defined applies to the bash benchmark only")
    # The NL2Bash-comparable figure is defined on the test split's items only.
    nl2bash = _nl2bash_subset(args) if args.benchmark == "bash" and args.split == "test" else None
    from codefusion.generator import resolve_device

    device = resolve_device(args.device)
    gen = load_generator(args.model, device=device)
    examples = _examples(args)
    # Only the flags given reach the generator: another model's option is its one-line error,
    # raised here before anything is generated.
    own = _own_options(args)
    gen.options(**own)
    given = {"num_draws": args.draws, "syntax_rank": args.syntax_rank, "rank": args.rank}
    options = {**{k: v for k, v in given.items() if v is not None}, **own}
    name = _run_name(Path(args.model))
    split = "" if args.split == "test" else f"-{args.split}"
    out = Path(args.out or f"results/{name}/{args.benchmark}{split}")
    if (out / "metrics.json").exists() and not args.overwrite:
        raise UserError(
            f"{out} holds the results of an earlier run: pass --overwrite to replace them, or "
            "--out another folder"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation warnings per prompt would flood the bar
        m = run_eval(
            gen,
            args.benchmark,
            examples,
            out,
            system=args.system or name,
            k=args.k,
            batch_size=args.batch_size,
            codebertscore=args.codebertscore,
            seed=args.seed,
            nl2bash=nl2bash,
            split=args.split,
            **options,
        )
    print((out / "table.md").read_text())
    _print_summary(m, out)
    return 0


def _run_name(model: Path) -> str:
    """A model directory's run: the folder above ``model/`` (runs/NAME/model), else its own
    name. Two runs' exports are both called ``model``: their results must not collide."""
    model = model.resolve()
    return model.parent.name if model.name == "model" and model.parent.name else model.name


def _own_options(args: argparse.Namespace) -> dict:
    """The generation options the command line gave (any model's: see codefusion.options)."""
    from codefusion.decoding import DecodingOptions, UnmaskingOptions
    from codefusion.options import given_options
    from codefusion.sampling.options import SamplingOptions

    return given_options(args, SamplingOptions, DecodingOptions, UnmaskingOptions)


def _add_option_flags(p: argparse.ArgumentParser) -> None:
    """Every model's generation options as flags, derived from their dataclasses."""
    from codefusion.decoding import DecodingOptions, UnmaskingOptions
    from codefusion.options import add_option_flags
    from codefusion.sampling.options import SamplingOptions

    add_option_flags(p, SamplingOptions, prefix="CodeFusion: ")
    add_option_flags(p, UnmaskingOptions, prefix="masked: ", skip=("steps",))
    add_option_flags(p, DecodingOptions, prefix="baseline: ")


def _examples(args: argparse.Namespace) -> list:
    """The test split, or the held-out share of the train split that training validated on."""
    from codefusion.data import holdout_examples, load_benchmark

    if args.split == "test":
        examples = load_benchmark(args.benchmark, "test", args.data)[0]
    else:
        train = load_benchmark(args.benchmark, "train", args.data)[0]
        examples = holdout_examples(
            train, args.holdout_fraction, args.holdout_seed, args.benchmark
        )[1]
    return examples[: args.limit] if args.limit else examples


def _diagnose(args: argparse.Namespace) -> int:
    import json

    from codefusion.auto import load_generator
    from codefusion.diagnostics import model_diagnostics_on
    from codefusion.generator import resolve_device
    from codefusion.pipeline import CodeFusion
    from codefusion.scoring.evaluate import generation_diagnostics

    device = resolve_device(args.device)
    gen = load_generator(args.model, device=device)
    examples = _examples(args)
    own = _own_options(args)
    if args.steps is None and gen.takes("steps"):
        own["steps"] = DIAGNOSE_STEPS
    gen.options(**own)
    out: dict = {"split": args.split, "n": len(examples)}
    if isinstance(gen, CodeFusion):
        out["model"] = model_diagnostics_on(gen, examples, seed=args.seed)
    options = {k: v for k, v in {"num_draws": args.draws, **own}.items() if v is not None}
    out["generation"] = generation_diagnostics(
        gen, examples, args.benchmark, seed=args.seed, progress=True, **options
    )
    print(json.dumps(out, indent=2))
    return 0


def _add_split_args(r: argparse.ArgumentParser, split: bool = True) -> None:
    """--split (unless the command takes several) and how the held-out share is drawn."""
    if split:
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


def _steps_curve(args: argparse.Namespace) -> int:

    from codefusion.auto import load_generator
    from codefusion.generator import resolve_device
    from eval.curves import steps_curve

    device = resolve_device(args.device)
    gen = load_generator(args.model, device=device)
    options = {"num_draws": args.draws} if args.draws else {}
    rows = steps_curve(
        gen, _examples(args), args.benchmark, args.steps, Path(args.out), args.seed, **options
    )
    keys = ("top1", "top5", "valid_top1", "length_acc")
    for r in rows:
        print(f"steps {r['steps']:>5}: " + "  ".join(f"{k} {r[k]:.1f}" for k in keys))
    return 0


def _steps_plot(args: argparse.Namespace) -> int:
    from eval.curves import steps_plot

    steps_plot([Path(d) for d in args.curves], args.labels, Path(args.out), args.metrics)
    print(f"wrote {args.out} (numbers beside it as .json)")
    return 0


def _training_curves(args: argparse.Namespace) -> int:
    from eval.curves import training_curves

    data = training_curves([Path(s) for s in args.stages], args.labels, Path(args.out), args.metric)
    for label, d in data.items():
        print(label, " ".join(f"{x}:{y:.1f}" for x, y in zip(d["steps"], d["values"], strict=True)))
    return 0


def _ablation(args: argparse.Namespace) -> int:
    from eval.ablation import run_plan

    table = run_plan(Path(args.plan), Path(args.out), args.only, args.data)
    print(table.read_text())
    return 0


def _repair(args: argparse.Namespace) -> int:
    from eval.beyond import repair_command

    return repair_command(args, _examples(args))


def _guidance(args: argparse.Namespace) -> int:
    from eval.beyond import guidance_command

    return guidance_command(
        args, lambda split: _examples(argparse.Namespace(**{**vars(args), "split": split}))
    )


def _nl2bash_subset(args: argparse.Namespace) -> Nl2BashSubset:
    """The items of Bash's NL2Bash-comparable figure; says so when the figure is omitted."""
    from codefusion.scoring.evaluate import find_nl2bash_subset

    subset = find_nl2bash_subset(args.data, args.nl2bash_defined)
    if subset.ids is None:
        print(f"note: NL2Bash-comparable figure omitted: {subset.source}", file=sys.stderr)
    return subset


def _print_summary(m: dict, out: Path) -> None:
    line = f"top-1 {m['top1']:.1f}  top-3 {m['top3']:.1f}  top-5 {m['top5']:.1f}"
    nb = m.get("nl2bash_comparable") or {}
    if "top1" in nb:
        line += f"  (NL2Bash-comparable: top-1 {nb['top1']:.1f}  top-5 {nb['top5']:.1f})"
    for name, fig in (m.get("figures") or {}).items():
        line += f"  ({name.replace('_', '-')}: top-1 {fig['top1']:.1f}  top-5 {fig['top5']:.1f})"
    print(f"{line}  ({m['n']} items) -> {out}")


def _rescore(args: argparse.Namespace) -> int:
    import json

    from codefusion.data import holdout_examples, load_benchmark
    from eval.harness import rescore
    from eval.tables import result_dirs

    splits: dict[str, dict[str, list[Example]]] = {}
    # A list asked for explicitly must exist, whatever the folders hold.
    nl2bash = _nl2bash_subset(args) if args.nl2bash_defined else None
    for d in result_dirs([Path(x) for x in args.results], "predictions.jsonl", repair=True):
        if (d / "repair.json").is_file():  # a repair table (python -m eval repair)
            from eval.beyond import rescore_repair

            lang = json.loads((d / "repair.json").read_text())["benchmark"]
            m = rescore_repair(d, load_benchmark(lang, "test", args.data)[0])
            print(f"repair table re-scored ({len(m['rows'])} rows) -> {d}")
            continue
        lang = _benchmark_of(d)
        if lang not in splits:
            train = load_benchmark(lang, "train", args.data)[0]
            splits[lang] = {
                "test": load_benchmark(lang, "test", args.data)[0],
                "heldout": holdout_examples(train, args.holdout_fraction, args.holdout_seed, lang)[
                    1
                ],
            }
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
    p = Parser(
        prog="python -m eval",
        description="Evaluate CodeFusion (or the autoregressive baseline) on the paper's benchmarks.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    r = sub.add_parser(
        "run",
        help="generate top-k for a test split and score it",
        description="Top-k for every item of the test split (or the held-out share of the train "
        "split), scored; predictions.jsonl, metrics.json and table.md in --out. Example: "
        "python -m eval run --model runs/cf-tiny/model --benchmark cf --steps 100",
    )
    r.add_argument("--model", required=True, help="model directory")
    r.add_argument("--benchmark", required=True, choices=["cf", "bash", "python"])
    r.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    r.add_argument(
        "--out",
        help="output folder (default results/<run>/<benchmark>, <run> the folder above "
        "model/; an existing one is refused without --overwrite)",
    )
    r.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    r.add_argument("--system", help="system name in the tables (default: the run's name)")
    r.add_argument("--k", type=int, default=5, help="candidates per item, top-k (default 5)")
    r.add_argument("--draws", type=int, help="draws per prompt (default 2k; beam search: k beams)")
    _add_option_flags(r)
    r.add_argument("--syntax-rank", choices=["python", "bash", "cf"], help="parse-first ranking")
    r.add_argument(
        "--rank",
        choices=["score", "votes"],
        help="order candidates by the model's score (default) or by how many draws agree",
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--limit", type=positive_int, help="only the first N test items (smoke runs)")
    _add_split_args(r)
    r.add_argument("--batch-size", type=int, default=32, help="prompts per generation batch")
    r.add_argument(
        "--codebertscore", help="local CodeBERT(-python) model directory for CodeBERTScore"
    )
    r.add_argument("--device", help="cpu or cuda")
    r.add_argument("--nl2bash-defined", metavar="FILE", help=_NL2BASH_HELP)
    r.set_defaults(func=_run)
    dg = sub.add_parser(
        "diagnose",
        description="Example: python -m eval diagnose --model runs/cf-tiny/model --benchmark cf "
        "--split heldout",
        help="why a model generates well or badly: D on clean L(y), x0_hat accuracy by step, "
        "length and validity of samples",
    )
    dg.add_argument("--model", required=True, help="model directory")
    dg.add_argument("--benchmark", required=True, choices=["cf", "bash", "python"])
    dg.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    dg.add_argument("--draws", type=int, help="noise draws per prompt (default 2k)")
    _add_option_flags(dg)  # CodeFusion's --steps defaults to DIAGNOSE_STEPS here
    dg.add_argument("--seed", type=int, default=0)
    dg.add_argument("--limit", type=positive_int, help="only the first N items")
    dg.add_argument("--device", help="cpu or cuda")
    _add_split_args(dg)
    dg.set_defaults(func=_diagnose)
    ab = sub.add_parser(
        "ablation",
        help="train and score a plan of configurations (eval/ablation.py), one table",
        description="Train each row of a plan (skipped when its model exists), score the held-out "
        "share and the test split, write one table. Example: python -m eval ablation "
        "configs/ablation/cf-copy.yaml --out results/copy-cf --only lit",
    )
    ab.add_argument("plan", help="ablation plan (YAML), e.g. configs/ablation/cf-small.yaml")
    ab.add_argument("--out", required=True, help="results folder")
    ab.add_argument("--only", nargs="+", help="run only these rows (others: table only)")
    ab.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    ab.set_defaults(func=_ablation)
    rp = sub.add_parser(
        "repair",
        help="repair rate of CodeFusion.edit on corrupted test gold, by strength",
        description="Corrupt each item's gold in documented ways (eval/beyond.py: a dropped "
        "parenthesis, a wrong function/utility name, a wrong number or flag), revise it with "
        "CodeFusion.edit under the item's prompt at each strength, and score the top-k with the "
        "benchmark's metric; the table sets the repair rate beside the rate of returning the "
        "input unchanged. Example: python -m eval repair --model DIR --benchmark cf --out "
        "results/beyond/cf-repair --strength 0.01 0.1 1",
    )
    rp.add_argument("--model", required=True, help="model directory (CodeFusion)")
    rp.add_argument("--benchmark", required=True, choices=["cf", "bash"])
    rp.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    rp.add_argument("--out", required=True, help="results folder")
    rp.add_argument("--strength", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5, 0.75, 1.0])
    rp.add_argument("--kinds", nargs="+", choices=["paren", "name", "number"],
                    default=["paren", "name", "number"])  # fmt: skip
    rp.add_argument("--k", type=int, default=5)
    rp.add_argument("--draws", type=int, default=10, help="edit draws per item (default 10)")
    rp.add_argument("--steps", type=int, help="the respaced plan whose steps below t0 run")
    rp.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 1)")
    rp.add_argument("--sample", type=int, help="a seeded random subset of N items")
    rp.add_argument("--limit", type=positive_int, help="only the first N items (smoke runs)")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--batch-size", type=int, default=32, help="items per edit batch")
    rp.add_argument("--device", help="cpu or cuda")
    _add_split_args(rp)
    rp.set_defaults(func=_repair)
    gd = sub.add_parser(
        "guidance",
        help="top-k and diversity by classifier-free guidance scale; default w by held-out",
        description="`eval run` at each guidance scale on each split (a run whose metrics.json "
        "holds the same options is reused), then one table; the default w is the best "
        "held-out top-1 (ties: top-5, then nearest 1). Test results are reported only. Example: "
        "python -m eval guidance --model DIR --benchmark cf --out results/beyond/cf-guidance",
    )
    gd.add_argument("--model", required=True, help="model directory (fine-tuned with "
                    "prompt_dropout)")  # fmt: skip
    gd.add_argument("--benchmark", required=True, choices=["cf", "bash", "python"])
    gd.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    gd.add_argument("--out", required=True, help="results folder")
    gd.add_argument("--w", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    gd.add_argument("--splits", nargs="+", choices=["heldout", "test"],
                    default=["heldout", "test"])  # fmt: skip
    gd.add_argument("--collect", action="store_true", help="only tabulate saved runs")
    gd.add_argument("--k", type=int, default=5)
    gd.add_argument("--draws", type=int, default=10)
    gd.add_argument("--steps", type=int, default=100)
    gd.add_argument("--seed", type=int, default=0)
    gd.add_argument("--limit", type=positive_int, help="only the first N items (smoke runs)")
    _add_split_args(gd, split=False)
    gd.set_defaults(func=_guidance)
    s = sub.add_parser(
        "rescore",
        help="score saved predictions again with the current metrics (no generation)",
        description="Score the top-k saved in each result folder's predictions.jsonl again with "
        "the current metrics, without generating: rewrites the per-item verdicts in "
        "predictions.jsonl, metrics.json and table.md, keeping the run's system name, options "
        "and generation time. Needs the benchmark data the predictions were made on. Example: "
        "python -m eval rescore results/ablation-cf/self-cond",
    )
    s.add_argument(
        "results",
        nargs="+",
        help="result folders (each with predictions.jsonl and metrics.json, or parents of them)",
    )
    s.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    s.add_argument("--nl2bash-defined", metavar="FILE", help=_NL2BASH_HELP)
    _add_split_args(s, split=False)  # held-out folders: how that share was drawn
    s.set_defaults(func=_rescore)
    sc = sub.add_parser(
        "steps-curve",
        help="quality against the number of sampling steps, for one model",
        description="Example: python -m eval steps-curve --model M --benchmark cf --out D",
    )
    sc.add_argument("--model", required=True, help="model directory")
    sc.add_argument("--benchmark", required=True, choices=["cf", "bash", "python"])
    sc.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    sc.add_argument(
        "--steps", type=int, nargs="+", default=[1, 2, 5, 10, 25, 50, 100, 200, 400, 1200]
    )
    sc.add_argument("--draws", type=int, help="noise draws per prompt (default 2k)")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--limit", type=positive_int, help="only the first N items")
    sc.add_argument("--device", help="cpu or cuda")
    sc.add_argument("--out", required=True, help="folder for curve.json and curve.png")
    _add_split_args(sc)
    sc.set_defaults(func=_steps_curve)
    sp = sub.add_parser(
        "steps-plot",
        help="several models' steps curves in one plot (their curve.json)",
        description="Example: python -m eval steps-plot DIR_A DIR_B --labels a b --out s.png",
    )
    sp.add_argument("curves", nargs="+", help="steps-curve output folders (with curve.json)")
    sp.add_argument("--labels", nargs="+", required=True, help="one label per folder")
    sp.add_argument("--metrics", nargs="+", default=["top1", "top5"], help="top1 top5 valid_top1")
    sp.add_argument("--out", required=True, help="PNG path (numbers beside it as .json)")
    sp.set_defaults(func=_steps_plot)
    tc = sub.add_parser(
        "training-curves",
        help="held-out metric against training steps, from CSV logs",
        description="Example: python -m eval training-curves a/finetune --labels a --out c.png",
    )
    tc.add_argument("stages", nargs="+", help="stage folders, e.g. runs/NAME/finetune")
    tc.add_argument("--labels", nargs="+", required=True, help="one label per stage folder")
    tc.add_argument("--metric", default="val/top5")
    tc.add_argument("--out", required=True, help="PNG path (numbers beside it as .json)")
    tc.set_defaults(func=_training_curves)
    t = sub.add_parser(
        "tables",
        help="combine result folders into one table and a plot",
        description="Example: python -m eval tables results/copy-cf --out results/tables.md",
    )
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
