"""The ``codefusion`` command: generate, infill or edit code, inspect models, build the
tokenizer and corpora.

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
from codefusion.options import Parser

DEFAULT_CACHE = Path.home() / ".cache" / "codefusion"


def _generate_options(args: argparse.Namespace) -> dict:
    """The generator's own options among the flags: only those given (another model's option is
    then the generator's one-line error, not silently ignored)."""
    from codefusion.decoding import DecodingOptions, UnmaskingOptions
    from codefusion.options import given_options
    from codefusion.sampling.options import SamplingOptions

    return given_options(args, SamplingOptions, DecodingOptions, UnmaskingOptions)


def _load(args: argparse.Namespace, verb: str | None = None):
    """The generator of ``--model`` on ``--device`` (default: CUDA when there is one); ``verb``:
    one only some generators serve (infill: the diffusion models; edit: CodeFusion)."""
    from codefusion.generator import check_model_dir, resolve_device

    check_model_dir(args.model)  # a missing directory or file: said before torch loads
    device = resolve_device(args.device)
    from codefusion.auto import load_generator
    from codefusion.infill import Infilling
    from codefusion.pipeline import CodeFusion

    gen = load_generator(args.model, device=device)
    serves = {"infill": Infilling, "edit": CodeFusion}.get(verb, object)
    if not isinstance(gen, serves):
        what = "a diffusion model" if verb == "infill" else "continuous CodeFusion"
        raise UserError(f"{verb} needs {what}, not this {gen.architecture} model")
    return gen


def _trace_steps(ts: list[int]) -> set[int]:
    """Eight steps of a plan, evenly spread, for --show-steps."""
    if not ts:
        return set()
    return {ts[round(i * (len(ts) - 1) / 7)] for i in range(8)}


def _steps_of(gen, options: dict) -> list[int]:
    """The steps a request runs, in order: CodeFusion's timesteps (T-1 ... 0), or the masked
    model's unmasking steps (1 ... steps)."""
    if hasattr(gen, "schedule"):
        return gen.schedule.timesteps(options.get("steps"))
    return gen.steps_of(options)


def _print_trace(cf, out, row: int, what: str) -> None:
    """x̂0 decoded at the traced steps (CodeFusion), or the canvas with its masked positions
    shown as ``_`` (the masked model)."""
    print(what, file=sys.stderr)
    if not out.trace:
        print("  (no denoising step: t0 = 0 decodes the input's L(code))", file=sys.stderr)
    render = getattr(cf, "render", None) or (lambda r: cf.tokenizer.decode(r))
    label = "step" if hasattr(cf, "render") else "t"
    for t, tokens in out.trace:
        print(f"  {label}={t:5d}  {render(tokens[row].tolist())}", file=sys.stderr)


def _print_candidates(results: list, args: argparse.Namespace, heads: list[dict]) -> None:
    """Each request's candidates: numbered lines (a candidate that does not parse marked under
    --syntax-rank; fewer than k said, with why), or with --json always a list of objects."""
    from codefusion.languages import is_valid

    lang = getattr(args, "syntax_rank", None)
    if args.json:
        out = []
        for head, cands in zip(heads, results, strict=True):
            rows = []
            for c in cands:
                row = {"code": c.code, "score": c.score}
                if lang:
                    row["parses"] = is_valid(c.code, lang)
                if hasattr(c, "fills"):
                    row["fills"] = list(c.fills)
                rows.append(row)
            out.append({**head, "candidates": rows})
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return
    for head, cands in zip(heads, results, strict=True):
        if len(heads) > 1:
            print(f"# {head.get('prompt', '')}")
        for rank, c in enumerate(cands, 1):
            fills = f"   fills: {', '.join(map(repr, c.fills))}" if hasattr(c, "fills") else ""
            bad = "   (does not parse)" if lang and not is_valid(c.code, lang) else ""
            print(f"{rank}. [{c.score:7.3f}]  {c.code}{fills}{bad}")
        if len(cands) < args.k:
            print(
                f"note: {len(cands)} of the {args.k} candidates asked for: the other draws "
                "repeated these (--draws N draws more)",
                file=sys.stderr,
            )


def _with_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return out


def _cmd_infill(args: argparse.Namespace) -> int:
    from codefusion.infill import parse_template

    parse_template(args.template, args.max_fill)  # a bad template: said before loading torch
    cf = _load(args, "infill")
    options = _generate_options(args)
    kw = dict(num_draws=args.draws, seed=args.seed, max_fill=args.max_fill, **options)
    cands = _with_warnings(
        lambda: cf.infill(
            args.template,
            args.prompt,
            k=args.k,
            syntax_rank=args.syntax_rank,
            rank=args.rank,
            **kw,
        )  # fmt: skip
    )
    if args.show_steps:
        plan = cf.infill_plan(args.template, args.max_fill)
        kw["num_draws"] = args.draws or plan.default_draws(args.k)
        ts = _steps_of(cf, options)
        out, _ = cf.infill_draws(args.template, args.prompt, trace_at=_trace_steps(ts), **kw)
        best = int(out.scores.argmax())
        _print_trace(cf, out, best, f"denoising the best draw ({len(ts)} steps):")
    _print_candidates([cands], args, [{"template": args.template, "prompt": args.prompt}])
    return 0


def _cmd_edit(args: argparse.Namespace) -> int:
    from codefusion.errors import GenerationError

    if not 0 < args.strength <= 1:  # said before loading torch
        raise GenerationError(f"strength must lie in (0, 1], got {args.strength}")
    cf = _load(args, "edit")
    options = _generate_options(args)
    kw = dict(seed=args.seed, **options)
    cands = _with_warnings(
        lambda: cf.edit(
            args.code,
            args.prompt,
            strength=args.strength,
            k=args.k,
            num_draws=args.draws,
            syntax_rank=args.syntax_rank,
            rank=args.rank,
            **kw,
        )
    )
    if args.show_steps:
        from codefusion.sampling.ddim import StepPlan

        opts = cf.options(strength=args.strength, **options)
        ts = StepPlan.for_options(cf.schedule, opts).ts
        out = cf.edit_draws(
            args.code, args.prompt, args.draws or 2 * args.k, args.strength,
            trace_at=_trace_steps(ts), **kw,
        )  # fmt: skip
        best = int(out.scores.argmax())
        _print_trace(cf, out, best, f"editing from t0 = {ts[0] if ts else 0} ({len(ts)} steps):")
    head = {"code": args.code, "prompt": args.prompt, "strength": args.strength}
    _print_candidates([cands], args, [head])
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:

    gen = _load(args)
    options = _generate_options(args)
    gen.options(**options)  # a bad option is an error before anything is generated
    if args.show_steps:
        if not hasattr(gen, "sample_draws"):
            raise UserError("--show-steps needs a diffusion model, not the autoregressive baseline")
        _show_steps(gen, args, options)
    results = _with_warnings(
        lambda: gen.generate(
            list(args.prompts), k=args.k, num_draws=args.draws, seed=args.seed,
            syntax_rank=args.syntax_rank, rank=args.rank, **options,
        )
    )  # fmt: skip
    _print_candidates(results, args, [{"prompt": p} for p in args.prompts])
    return 0


def _show_steps(cf, args: argparse.Namespace, options: dict) -> None:
    """Replay the first draw: the code decoded from x0_hat at a few steps (CodeFusion), or the
    canvas as it unmasks (the masked model)."""
    ts = _steps_of(cf, options)
    out = cf.sample_draws(args.prompts[:1], 1, seed=args.seed, trace_at=_trace_steps(ts), **options)
    _print_trace(cf, out, 0, f"denoising '{args.prompts[0]}' (draw 1, {len(ts)} steps):")


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

    corpus = tokenizer_corpus(args.data, args.python_corpus)
    tok = CodeTokenizer(train_bpe(corpus, args.vocab_size, scheme=args.scheme))
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


def _add_sampling_args(
    p: argparse.ArgumentParser, shown: str = "best", others: tuple[str, ...] = ()
) -> None:
    """The flags generate, infill and edit share, the generation options among them derived
    from the options dataclasses: CodeFusion's, and ``others``' ("masked", "baseline") for a
    verb that serves them too; ``shown``: the draw that --show-steps replays."""
    from codefusion.decoding import DecodingOptions, UnmaskingOptions
    from codefusion.options import add_option_flags
    from codefusion.sampling.options import SamplingOptions

    p.add_argument(
        "--model", required=True, help="model directory (config.json, model.safetensors, tokenizer)"
    )
    p.add_argument("--k", type=int, default=5, help="candidates to return (default 5)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same output")
    add_option_flags(p, SamplingOptions, prefix="CodeFusion: " if others else "")
    if "masked" in others:  # --steps is shared: the masked model's unmasking steps
        add_option_flags(p, UnmaskingOptions, prefix="masked: ", skip=("steps",))
    if "baseline" in others:
        add_option_flags(p, DecodingOptions, prefix="baseline: ")
    p.add_argument(
        "--syntax-rank", choices=["python", "bash", "cf"], help="rank candidates that parse first"
    )
    p.add_argument(
        "--rank",
        choices=["score", "votes"],
        default="score",
        help="order by the model's score, or by how many draws agree (ties by score)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a list")
    p.add_argument(
        "--show-steps", action="store_true", help=f"replay the denoising of the {shown} draw"
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="codefusion",
        description="CodeFusion: a diffusion model that generates code from natural language. "
        "Train with `python -m train`, evaluate with `python -m eval` (from a checkout).",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    g = sub.add_parser(
        "generate",
        help="generate top-k programs for prompts",
        description="Top-k programs for each prompt, best first, ranked by the model's own "
        "score (CodeFusion, the masked diffusion model or the autoregressive baseline: the "
        "model directory says which). "
        "Example: codefusion generate --model runs/cf-tiny/model --k 3 --steps 100 "
        "'Highlight cells greater than 100'",
    )
    g.add_argument("prompts", nargs="+", help="natural-language prompt(s)")
    _add_sampling_args(g, shown="first", others=("masked", "baseline"))
    g.add_argument("--draws", type=int, default=None, help="noise draws per prompt (default 2k)")
    g.set_defaults(func=_cmd_generate)

    f = sub.add_parser(
        "infill",
        help="fill the holes of a code template under a prompt (diffusion model)",
        description="Fill the holes of TEMPLATE under PROMPT; every token of the template's "
        "text is kept, at its place. Holes: <fill> (the model chooses 1..--max-fill tokens: "
        "the lengths are drawn in turn across the draws and ranked with them), <fill:N> "
        "(exactly N tokens), <fill:A-B> (A to B tokens). The code ends where the template does, "
        "unless it ends with <fill>. Spaces just before a hole belong to the hole (byte-level "
        "BPE puts a space on the token after it). Example: codefusion infill --model DIR "
        "'GreaterThan(<fill>)' 'Highlight cells greater than 100'",
    )
    f.add_argument("template", help="code with holes, e.g. 'find . -name <fill> -delete'")
    f.add_argument("prompt", help="natural-language prompt")
    _add_sampling_args(f, others=("masked",))
    f.add_argument(
        "--max-fill",
        type=int,
        default=8,
        help="longest length drawn for a <fill> hole, in tokens (default 8)",
    )
    f.add_argument(
        "--draws",
        type=int,
        default=None,
        help="draws (default: every hole-length combination equally often, at least 2k)",
    )
    f.set_defaults(func=_cmd_infill)

    e = sub.add_parser(
        "edit",
        help="revise code under a prompt (SDEdit, diffusion model)",
        description="Revise CODE under PROMPT: the code's embedding is noised to step "
        "t0 = round(strength x (T-1)) and denoised under the prompt by the (respaced) steps "
        "below t0. Small strengths keep the input (at t0 = 0 the model only decodes it), "
        "strength 1 is a fresh sample. Example: codefusion edit --model DIR --strength 0.3 "
        "'GreaterThan(58)' 'Highlight cells greater than 85'",
    )
    e.add_argument("code", help="the code to revise (at most the model's canvas)")
    e.add_argument("prompt", help="natural-language prompt")
    e.add_argument(
        "--strength",
        type=float,
        default=0.3,
        help="noise strength in (0, 1]: faithfulness (small) against change (large); default 0.3",
    )
    _add_sampling_args(e)
    e.add_argument("--draws", type=int, default=None, help="noise draws (default 2k)")
    e.set_defaults(func=_cmd_edit)

    c = sub.add_parser(
        "params",
        help="per-component parameter counts of a preset or a model",
        description="Parameters of E, N, D, H, L of a preset or a saved model. Example: "
        "codefusion params --preset paper",
    )
    c.add_argument(
        "--preset", default="paper", choices=["paper", "small", "tiny"], help="default paper"
    )
    c.add_argument("--vocab-size", type=int, default=16384, help="vocabulary size (default 16384)")
    c.add_argument("--model", help="count a saved model directory instead")
    c.set_defaults(func=_cmd_params)

    t = sub.add_parser(
        "build-tokenizer",
        help="train the byte-level BPE on the training corpora",
        description="A BPE on the train splits and pre-training snippets (never the test "
        "splits), with the share of test code longer than the canvas. Example: codefusion "
        "build-tokenizer --out runs/tokenizers/all-16k-lit",
    )
    t.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--vocab-size", type=int, default=16384)
    t.add_argument(
        "--scheme",
        choices=["literal", "bytelevel"],
        default="literal",
        help="literal (default): digits, punctuation and spaces cut apart, so a literal is the "
        "same tokens in prompt and code; bytelevel: GPT-2's, the space fused into the next word",
    )
    t.add_argument("--python-corpus", help="Python snippet file (default: built from the stdlib)")
    t.add_argument(
        "--code-len", type=int, default=128, help="canvas length for the truncation report"
    )
    t.set_defaults(func=_cmd_build_tokenizer)

    y = sub.add_parser(
        "build-python-corpus",
        help="build the Python pre-training snippets from the stdlib",
        description="Single-line statements of this Python's standard library, deduplicated "
        "(the published data has no Python snippet file). Example: codefusion build-python-corpus",
    )
    y.add_argument("--out", default=str(DEFAULT_CACHE / "python_snippets.txt"))
    y.add_argument("--max-chars", type=int, default=200)
    y.set_defaults(func=_cmd_build_python_corpus)

    d = sub.add_parser(
        "download",
        help="fetch the benchmark files from microsoft/prose-benchmarks",
        description="The three benchmarks and the snippet files, at a fixed commit, into a "
        "folder that --data and CODEFUSION_DATA take (the default one is found without either). "
        "Example: codefusion download",
    )
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
