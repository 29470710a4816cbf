"""Diversity of the top-k candidates of one item (``docs/evaluation.md``, "Diversity").

All functions take the k candidates of a single item; the caller averages over items. The
language-specific parts are passed in: ``normalise`` (Python ``ast.dump``, Bash template, CF
canonical form) and ``tokenize`` (code tokens, e.g. CoNaLa tokens or whitespace split).
Plain Python, no dependencies.

Definitions
-----------
* ``unique@k``: number of distinct normalised forms among the candidates.
* ``distinct-n``: distinct n-grams / total n-grams, n-grams taken within each candidate
  (never across two candidates) and pooled over the k candidates. When the candidates hold no
  n-gram at all (all shorter than n tokens), the value is defined as 0.0: there is no
  observed n-gram diversity (this keeps per-item averages finite; report how many items
  have no n-gram where it matters).
* mean pairwise edit distance: for every unordered pair of candidates, the token-level
  Levenshtein distance divided by the longer token length (two empty candidates: 0.0),
  averaged over the pairs; 0.0 for fewer than two candidates. Values lie in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from itertools import combinations

__all__ = [
    "distinct_n",
    "levenshtein",
    "mean_pairwise_edit_distance",
    "unique_at_k",
]


def unique_at_k(cands: Sequence[str], normalise: Callable[[str], Hashable]) -> int:
    """Count the distinct normalised forms among ``cands``."""
    return len({normalise(c) for c in cands})


def distinct_n(cands: Sequence[str], tokenize: Callable[[str], list[str]], n: int = 4) -> float:
    """Distinct n-grams / total n-grams over the candidates (0.0 when there are none)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    total = 0
    seen: set[tuple[str, ...]] = set()
    for cand in cands:
        toks = list(tokenize(cand))
        for i in range(len(toks) - n + 1):
            seen.add(tuple(toks[i : i + n]))
            total += 1
    return len(seen) / total if total else 0.0


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Edit distance (insert, delete, substitute; unit costs) between two token sequences."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def mean_pairwise_edit_distance(
    cands: Sequence[str], tokenize: Callable[[str], list[str]]
) -> float:
    """Mean over candidate pairs of token Levenshtein distance / longer length."""
    if len(cands) < 2:
        return 0.0
    toks = [list(tokenize(c)) for c in cands]
    dists = []
    for a, b in combinations(toks, 2):
        longest = max(len(a), len(b))
        dists.append(levenshtein(a, b) / longest if longest else 0.0)
    return sum(dists) / len(dists)
