"""Can a model copy a literal? The share of in-prompt literals of each benchmark's test golds
whose token ids are the same in the prompt and in the code, for each tokenizer scheme.

    python bench/literal_tokens.py --data ../shared/data/prose-codefusion

A literal counts when it occurs in its prompt as a whole word with the same case
(``codefusion/literals.py``). BPEs are trained here on each benchmark's train split and
snippets, at the CPU protocol's sizes (CF 1K, Bash and Python 4K).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codefusion.data import load_benchmark, resolve_data_dir  # noqa: E402
from codefusion.literals import literal_report  # noqa: E402
from codefusion.tokenizer import CodeTokenizer, tokenizer_corpus, train_bpe  # noqa: E402

SIZES = {"cf": 1000, "bash": 4000, "python": 4000}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    p.add_argument("--languages", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = p.parse_args(argv)
    data = resolve_data_dir(args.data)
    print("| benchmark | scheme | numbers identical / in prompt | text identical / in prompt |")
    print("|---|---|---|---|")
    for lang in args.languages:
        corpus = list(tokenizer_corpus(data, languages=[lang]))
        examples = load_benchmark(lang, "test", data)[0]
        for scheme in ("bytelevel", "literal"):
            tok = CodeTokenizer(train_bpe(corpus, vocab_size=SIZES[lang], scheme=scheme))
            r = literal_report(tok, examples, lang)
            n, t = r["numbers"], r["text"]
            print(
                f"| {lang} | {scheme} | {n['identical']}/{n['in_prompt']} ({n['share']:.1f}%) "
                f"| {t['identical']}/{t['in_prompt']} ({t['share']:.1f}%) |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
