"""The ``codefusion`` command: generate code, inspect models, build the tokenizer and corpora.

Training and evaluation run from a checkout: ``python -m train`` and ``python -m eval``.
A user mistake prints one line ``error: ...`` and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from codefusion.errors import UserError

DEFAULT_CACHE = Path.home() / ".cache" / "codefusion"


def _generate_options(args: argparse.Namespace) -> dict:
    """The generator's own options among the flags: only those given (another model's option is
    then the generator's one-line error, not silently ignored)."""
    given = {"steps": args.steps, "eta": args.eta, "mode": args.mode}
    options = {k: v for k, v in given.items() if v is not None}
    if args.clamp:
        options["clamp"] = True
    return options


def _cmd_generate(args: argparse.Namespace) -> int:
    from codefusion.generator import check_model_dir

    check_model_dir(args.model)  # a missing directory or file: said before torch loads
    import torch

    from codefusion.auto import load_generator
    from codefusion.pipeline import CodeFusion

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = load_generator(args.model, device=device)
    options = _generate_options(args)
    gen.options(**options)  # a bad option is an error before anything is generated
    if args.show_steps:
        if not isinstance(gen, CodeFusion):
            raise UserError("--show-steps needs a diffusion model, not the autoregressive baseline")
        _show_steps(gen, args, options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = gen.generate(
            args.prompts,
            k=args.k,
            num_draws=args.draws,
            seed=args.seed,
            syntax_rank=args.syntax_rank,
            rank=args.rank,
            **options,
        )
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.json:
        out = [
            {"prompt": p, "candidates": [{"code": c.code, "score": c.score} for c in cands]}
            for p, cands in zip(args.prompts, results, strict=True)
        ]
        print(json.dumps(out if len(out) > 1 else out[0], indent=2, ensure_ascii=False))
        return 0
    for p, cands in zip(args.prompts, results, strict=True):
        if len(args.prompts) > 1:
            print(f"# {p}")
        for rank, c in enumerate(cands, 1):
            print(f"{rank}. [{c.score:7.3f}]  {c.code}")
    return 0


def _show_steps(cf, args: argparse.Namespace, options: dict) -> None:
    """Replay the denoising of the first draw: the code decoded from x0_hat at a few steps."""
    ts = cf.schedule.timesteps(args.steps)
    picks = sorted({ts[round(i * (len(ts) - 1) / 7)] for i in range(8)}, reverse=True)
    out = cf.sample_draws(args.prompts[:1], 1, seed=args.seed, trace_at=set(picks), **options)
    print(f"denoising '{args.prompts[0]}' (draw 1, {len(ts)} steps):", file=sys.stderr)
    for t, tokens in out.trace:
        print(f"  t={t:5d}  {cf.tokenizer.decode(tokens[0].tolist())}", file=sys.stderr)


def _cmd_params(args: argparse.Namespace) -> int:
    from codefusion.config import preset
    from codefusion.model import CodeFusionModel

    if args.model:
        from codefusion.pipeline import CodeFusion

        model = CodeFusion.from_pretrained(args.model).model
    else:
        model = CodeFusionModel(preset(args.preset, vocab_size=args.vocab_size))
    counts = model.parameter_counts()
    for name, n in counts.items():
        print(f"{name:14s} {n:>12,d}  ({n / 1e6:.1f}M)")
    return 0


def _cmd_build_tokenizer(args: argparse.Namespace) -> int:
    from codefusion.tokenizer import CodeTokenizer, tokenizer_corpus, train_bpe, truncation_report

    tok = CodeTokenizer(train_bpe(tokenizer_corpus(args.data, args.python_corpus), args.vocab_size))
    tok.save_pretrained(args.out)
    print(f"vocabulary: {len(tok)} tokens -> {args.out}")
    for lang, share in truncation_report(tok, args.data, args.code_len).items():
        print(f"{lang:7s} test code longer than {args.code_len} tokens: {100 * share:.2f}%")
    return 0


def _cmd_build_python_corpus(args: argparse.Namespace) -> int:
    from codefusion.pycorpus import build_python_corpus, write_corpus

    snippets = build_python_corpus(max_chars=args.max_chars, progress=True)
    write_corpus(snippets, Path(args.out))
    print(f"{len(snippets)} distinct snippets -> {args.out}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from codefusion.download import download

    dest = download(Path(args.out), base_url=args.base_url, force=args.force)
    print(f"benchmark files in {dest}; use --data {dest} or export CODEFUSION_DATA={dest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="codefusion",
        description="CodeFusion: a diffusion model that generates code from natural language. "
        "Train with `python -m train`, evaluate with `python -m eval` (from a checkout).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate top-k programs for prompts")
    g.add_argument("prompts", nargs="+", help="natural-language prompt(s)")
    g.add_argument(
        "--model", required=True, help="model directory (config.json, model.safetensors, tokenizer)"
    )
    g.add_argument("--k", type=int, default=5, help="candidates to return per prompt (default 5)")
    g.add_argument("--draws", type=int, default=None, help="noise draws per prompt (default 2k)")
    g.add_argument(
        "--steps",
        type=int,
        default=None,
        help="CodeFusion: denoising steps (default: all T; fewer are respaced)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="random seed: the same seed gives the same output"
    )
    g.add_argument(
        "--eta", type=float, help="CodeFusion: DDIM eta, 0 deterministic (default), 1 ancestral"
    )
    g.add_argument(
        "--clamp",
        action="store_true",
        help="CodeFusion: clamp each step's x0 to the nearest token embedding",
    )
    g.add_argument(
        "--syntax-rank", choices=["python", "bash", "cf"], help="rank candidates that parse first"
    )
    g.add_argument(
        "--rank",
        choices=["score", "votes"],
        default="score",
        help="order by the model's score, or by how many draws agree (ties by score)",
    )
    g.add_argument("--json", action="store_true", help="print JSON instead of a list")
    g.add_argument(
        "--show-steps", action="store_true", help="replay the denoising of the first draw"
    )
    g.add_argument(
        "--mode",
        choices=["beam", "sample"],
        help="the autoregressive baseline: beam search (default) or nucleus sampling",
    )
    g.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    g.set_defaults(func=_cmd_generate)

    c = sub.add_parser("params", help="per-component parameter counts of a preset or a model")
    c.add_argument("--preset", default="paper", help="paper or tiny (default paper)")
    c.add_argument("--vocab-size", type=int, default=16384, help="vocabulary size (default 16384)")
    c.add_argument("--model", help="count a saved model directory instead")
    c.set_defaults(func=_cmd_params)

    t = sub.add_parser("build-tokenizer", help="train the byte-level BPE on the training corpora")
    t.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--vocab-size", type=int, default=16384)
    t.add_argument("--python-corpus", help="Python snippet file (default: built from the stdlib)")
    t.add_argument(
        "--code-len", type=int, default=128, help="canvas length for the truncation report"
    )
    t.set_defaults(func=_cmd_build_tokenizer)

    y = sub.add_parser(
        "build-python-corpus", help="build the Python pre-training snippets from the stdlib"
    )
    y.add_argument("--out", default=str(DEFAULT_CACHE / "python_snippets.txt"))
    y.add_argument("--max-chars", type=int, default=200)
    y.set_defaults(func=_cmd_build_python_corpus)

    d = sub.add_parser("download", help="fetch the benchmark files from microsoft/prose-benchmarks")
    d.add_argument("--out", default=str(DEFAULT_CACHE / "data"))
    d.add_argument("--base-url", default=None, help="mirror of the repository's raw files")
    d.add_argument("--force", action="store_true", help="download again even if present")
    d.set_defaults(func=_cmd_download)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
