"""Generating top-k for benchmark items and scoring it: what training's held-out check and every
evaluation command share (``eval/harness.py`` writes the files, ``train/validation.py`` logs the
numbers).

How each language is scored (its metric, normal form, code tokens, validity) is said in the
language registry (:mod:`codefusion.languages`). Bash is reported twice: our template match on
every test item, and the NL2Bash-comparable figure, which counts only the items NL2Bash's
official evaluation can score (listed in the data folder's ``nl2bash-official-defined.json``)
over all items; the paper's Bash numbers stand beside the second
(``codefusion.scoring.paper.BESIDE_PAPER``).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from codefusion.data import NL2BASH_DEFINED, Example, load_nl2bash_defined, resolve_data_dir
from codefusion.languages import language
from codefusion.literals import copy_diagnostics
from codefusion.scoring.metrics import diversity
from codefusion.scoring.metrics import python as py_m

KS = (1, 3, 5)


@dataclass(frozen=True)
class Nl2BashSubset:
    """The Bash test items NL2Bash's official evaluation can score. ``ids`` is None when the
    list is not available; ``source`` names the file read, or says why there is none."""

    ids: frozenset[int | str] | None
    source: str


def find_nl2bash_subset(
    data_dir: str | os.PathLike | None = None, path: str | os.PathLike | None = None
) -> Nl2BashSubset:
    """The list at ``path`` when one is given (it must exist: asked for explicitly), else the
    one in the data folder, else a subset without IDs that says why the figure is omitted."""
    if path is not None:
        return Nl2BashSubset(load_nl2bash_defined(path), Path(path).name)
    default = resolve_data_dir(data_dir) / NL2BASH_DEFINED
    if not default.is_file():
        return Nl2BashSubset(None, f"no {NL2BASH_DEFINED} in the data folder {default.parent}")
    return Nl2BashSubset(load_nl2bash_defined(default), NL2BASH_DEFINED)


def generate_all(
    generator: Any,
    examples: Sequence[Example],
    k: int = 5,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    deadline: float | None = None,
    **options: Any,
) -> list[list[Any]]:
    """Top-k candidates for every example, in batches, with a progress bar.

    Batch ``i`` uses seed ``seed + i``: results do not depend on anything but the options.
    ``deadline`` (a ``time.monotonic()`` value): no batch is started that the last batch's
    duration says would end after it; the result then covers the first examples only.
    """
    out: list[list[Any]] = []
    last = 0.0
    with tqdm(total=len(examples), desc="generate", unit="item", disable=not progress) as bar:
        for i, start in enumerate(range(0, len(examples), batch_size)):
            if deadline is not None and out and time.monotonic() + last > deadline:
                break
            t0 = time.monotonic()
            chunk = examples[start : start + batch_size]
            prompts = [e.prompt for e in chunk]
            out.extend(generator.generate(prompts, k=k, seed=seed + i, allow_empty=True, **options))
            bar.update(len(chunk))
            last = time.monotonic() - t0
    return out


def score(
    lang: str,
    examples: Sequence[Example],
    candidates: Sequence[Sequence[Any]],
    nl2bash: Nl2BashSubset | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-item records and aggregate metrics (percentages for accuracies). For Bash,
    ``nl2bash`` gives the items of the NL2Bash-comparable figure (omitted without it)."""
    spec = language(lang)
    records, decided = [], Counter()
    topk = {k: 0 for k in KS}
    by_decided: dict[str, list[int]] = {}
    figures = {name: Counter() for name in spec.figures}
    degenerate = Counter()
    uniq, dist4, edit, valid = [], [], [], 0
    for ex, cands in zip(examples, candidates, strict=True):
        codes = [c.code for c in cands]
        results = [spec.correct(c, ex.code, ex.data) for c in codes]
        correct = [r[0] for r in results]
        how = results[0][1] if results else spec.correct("", ex.code, ex.data)[1]
        decided[how] += 1
        for k in KS:
            topk[k] += any(correct[:k])
        by_decided.setdefault(how, [0, 0])
        by_decided[how][0] += any(correct[:5])
        by_decided[how][1] += 1
        extra = {}
        for name, fig in spec.figures.items():
            verdicts = [fig.correct(c, ex.code, ex.data) for c in codes]
            extra[name] = [v[0] for v in verdicts]
            figures[name]["decided_by " + fig.correct("", ex.code, ex.data)[1]] += 1
            for k in KS:
                figures[name][k] += any(extra[name][:k])
        if spec.degenerate_gold is not None and spec.degenerate_gold(ex.code, ex.data):
            degenerate["items"] += 1
            for k in KS:
                degenerate[f"top{k}"] += any(correct[:k])
        if codes:
            valid += spec.parses(codes[0])
            uniq.append(diversity.unique_at_k(codes, spec.normalise))
            dist4.append(diversity.distinct_n(codes, spec.code_tokens, 4))
            edit.append(diversity.mean_pairwise_edit_distance(codes, spec.code_tokens))
        records.append(
            {
                "id": ex.id,
                "prompt": ex.prompt,
                "gold": ex.code,
                "candidates": [{"code": c.code, "score": round(c.score, 5)} for c in cands],
                "correct": correct,
                "decided_by": how,
                **({"figures": extra} if extra else {}),
            }
        )
    n = max(1, len(examples))
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    metrics: dict[str, Any] = {
        "benchmark": lang,
        "metric": spec.metric,
        "n": len(examples),
        **{f"top{k}": 100 * topk[k] / n for k in KS},
        "decided_by": dict(decided),
        "top5_by_decided_by": {h: 100 * c / t for h, (c, t) in by_decided.items()},
        "valid_top1": 100 * valid / n,
        "diversity": {
            "unique@k": mean(uniq),
            "distinct-4": mean(dist4),
            "mean_pairwise_edit_distance": mean(edit),
        },
    }
    if spec.figures:
        metrics["figures"] = {
            name: {
                "metric": fig.metric,
                **{f"top{k}": 100 * figures[name][k] / n for k in KS},
                "decided_by": {
                    key.split(" ", 1)[1]: v
                    for key, v in figures[name].items()
                    if isinstance(key, str)
                },
            }
            for name, fig in spec.figures.items()
        }
    strict = [r["figures"]["strict"] for r in records] if "strict" in spec.figures else None
    metrics["copy"] = copy_diagnostics(list(examples), list(candidates), lang, strict)
    if spec.degenerate_gold is not None:
        # Items whose gold a degenerate answer satisfies, and how many of the main figure's
        # top-k hits they hold.
        metrics["degenerate_gold"] = {
            "items": degenerate["items"],
            **{f"top{k}_hits": degenerate[f"top{k}"] for k in KS},
        }
    if lang == "bash":
        metrics["nl2bash_comparable"] = _nl2bash_comparable(records, nl2bash, n)
    if lang == "python":
        top1 = [c[0].code if c else "" for c in candidates]
        refs = [e.code for e in examples]
        metrics["bleu4_top1"] = py_m.bleu4(top1, refs)
        metrics["bleu4_best_of_k"] = mean(
            [
                max((py_m.sentence_bleu4(c.code, e.code) for c in cs), default=0.0)
                for e, cs in zip(examples, candidates, strict=True)
            ]
        )
        metrics["chrf_top1"] = py_m.chrf(top1, refs)
    return records, metrics


def _nl2bash_comparable(
    records: list[dict[str, Any]], subset: Nl2BashSubset | None, n: int
) -> dict[str, Any]:
    """Top-k counting only the items NL2Bash's official evaluation can score, divided by all
    ``n`` items, so that gold-vs-gold gives its ceiling (79.1% on the test split). Each record
    gets ``nl2bash_defined``: whether it is one of those items."""
    if subset is None or subset.ids is None:
        why = subset.source if subset is not None else "no list of NL2Bash-scorable items given"
        return {"omitted": why}
    for r in records:
        r["nl2bash_defined"] = r["id"] in subset.ids
    scored = [r for r in records if r["nl2bash_defined"]]
    return {
        **{f"top{k}": 100 * sum(any(r["correct"][:k]) for r in scored) / n for k in KS},
        "items": len(scored),
        "ceiling": 100 * len(scored) / n,
        "source": subset.source,
    }


def generation_diagnostics(
    generator: Any,
    examples: Sequence[Example],
    lang: str,
    k: int = 5,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
    **options: Any,
) -> dict[str, float]:
    """Top-k accuracy, valid top-1, unique@k and length accuracy of ``generator``'s top-k."""
    cands = generate_all(
        generator,
        examples,
        k=k,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        **options,
    )
    _, metrics = score(lang, examples, cands)
    return {
        "top1": metrics["top1"],
        "top3": metrics["top3"],
        "top5": metrics["top5"],
        "valid_top1": metrics["valid_top1"],
        "unique@k": metrics["diversity"]["unique@k"],
        **length_accuracy(generator.tokenizer, examples, cands),
    }


def length_accuracy(
    tokenizer: Any, examples: Sequence[Example], candidates: Sequence[Sequence[Any]]
) -> dict[str, float]:
    """Share (%) of candidates, and of top-1s, with as many tokens as the gold code."""
    same, firsts, total = 0, 0, 0
    for ex, cs in zip(examples, candidates, strict=True):
        gold = len(tokenizer.ids(ex.code))
        lens = [len(tokenizer.ids(c.code)) for c in cs]
        same += sum(n == gold for n in lens)
        total += len(lens)
        firsts += bool(lens) and lens[0] == gold
    return {
        "length_acc": 100 * same / max(1, total),
        "length_acc_top1": 100 * firsts / max(1, len(examples)),
    }
