"""Python metrics: normalised exact match, CoNaLa BLEU-4, chrF, CodeBERTScore.

See ``docs/evaluation.md`` ("Python"). The offline metrics (exact match, BLEU-4, chrF) are
always reported; none of them is comparable to the paper's Python numbers, which are
CodeBERTScore. :class:`CodeBERTScorer` implements CodeBERTScore (neulab/code-bert-score) against
a *local* model directory, since the ``neulab/codebert-python`` weights cannot be downloaded
here. Generated code is parsed, never executed.
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CodeBERTScorer",
    "bleu4",
    "chrf",
    "conala_tokenize",
    "exact_match",
    "normalise",
    "sentence_bleu4",
]


def _sacrebleu():
    """sacrebleu (the ``eval`` extra), imported where BLEU and chrF are computed: exact match,
    which training's held-out check scores, needs nothing beyond the base install."""
    import sacrebleu

    return sacrebleu


_NON_IDENTIFIER = re.compile(r"([^A-Za-z0-9_])")
_CAMEL = re.compile(r"([a-z])([A-Z])")


def _parse(code: str) -> ast.AST | None:
    try:
        return ast.parse(code)
    except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError...
        return None


def normalise(code: str) -> str:
    """Canonical form: ``ast.dump`` of the parse, else the whitespace-normalised text.

    Surrounding whitespace is stripped before parsing, so a trailing newline or a leading
    space does not turn a valid snippet into an unparseable one.
    """
    if not isinstance(code, str):
        return ""
    tree = _parse(code.strip())
    if tree is not None:
        try:
            return ast.dump(tree)
        except RecursionError:
            pass
    return " ".join(code.split())


def exact_match(pred: str, gold: str) -> bool:
    """True when ``pred`` and ``gold`` have the same :func:`normalise` form."""
    return normalise(pred) == normalise(gold)


def conala_tokenize(code: str) -> list[str]:
    """CoNaLa's BLEU tokenisation.

    Every character that is not ``[A-Za-z0-9_]`` is its own token, identifiers are split at
    lower-to-upper camelCase boundaries (``myList`` -> ``my List``), and both quote kinds are
    unified to a backtick so that ``'a'`` and ``"a"`` tokenise alike. Whitespace separates.
    """
    if not isinstance(code, str):
        return []
    spaced = _NON_IDENTIFIER.sub(r" \1 ", code)
    spaced = _CAMEL.sub(r"\1 \2", spaced)
    spaced = spaced.replace('"', "`").replace("'", "`")
    return spaced.split()


def _joined(code: str) -> str:
    return " ".join(conala_tokenize(code))


def _check_lengths(preds: Sequence[str], refs: Sequence[str]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")


def bleu4(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus-level BLEU-4 (0-100) on :func:`conala_tokenize` tokens, one reference each.

    Computed with sacrebleu on space-joined tokens (``tokenize='none'``), without smoothing,
    as CoNaLa's own corpus BLEU. Returns 0.0 for empty input.
    """
    _check_lengths(preds, refs)
    if not preds:
        return 0.0
    hyps = [_joined(p) for p in preds]
    gold = [_joined(r) for r in refs]
    return float(
        _sacrebleu()
        .corpus_bleu(hyps, [gold], tokenize="none", smooth_method="none", force=True)
        .score
    )


def sentence_bleu4(pred: str, ref: str) -> float:
    """Sentence-level BLEU-4 (0-100) on CoNaLa tokens, for the per-item max over top-k.

    Uses sacrebleu's sentence BLEU (exponential smoothing, effective order) since a single
    short snippet often has no matching 4-gram.
    """
    return float(_sacrebleu().sentence_bleu(_joined(pred), [_joined(ref)], tokenize="none").score)


def chrf(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2) on the raw code text."""
    _check_lengths(preds, refs)
    if not preds:
        return 0.0
    return float(_sacrebleu().corpus_chrf(list(preds), [list(refs)]).score)


# --------------------------------------------------------------------------- CodeBERTScore

# code-bert-score's ``no_punc``: a token made only of these characters (after stripping the
# byte-level whitespace markers) is not scored. Operator characters stay scored.
_PUNCT = frozenset(string.punctuation) - frozenset("+-*/&|~")
_WS_MARKERS = "\u0120\u010a\u0109\u2581 \t\n\r"


def _punctuation_only(token: str) -> bool:
    core = token.strip(_WS_MARKERS)
    return all(c in _PUNCT for c in core)


class CodeBERTScorer:
    """CodeBERTScore (Zhou et al. 2023; neulab/code-bert-score) with a local model.

    Semantics: each snippet (stripped) is encoded alone by a RoBERTa-family model; the hidden
    state of ``layer`` (``hidden_states[layer]``, 0 = embeddings, clamped to the model's depth;
    the paper's setting is ``neulab/codebert-python`` at layer 11) gives one vector per token.
    Special tokens, padding and punctuation-only tokens (code-bert-score's ``no_punc``) are
    excluded. With cosine similarity, precision is the mean over prediction tokens of the best
    match among reference tokens, recall the converse (greedy matching, no idf weighting,
    no baseline rescaling). ``F1 = 2PR/(P+R)`` and the recall-weighted
    ``F3 = 10PR/(9P+R)``.

    Differences from the reference code, all documented choices: special tokens are dropped
    from matching altogether (code-bert-score keeps them as match targets with zero weight);
    inputs longer than the model's window are truncated rather than windowed; when a side has
    no scorable token all four scores are 0.0; F1/F3 are 0.0 when P or R is not positive (only
    an untrained model produces that), so every score lies in [-1, 1] (F in [0, 1]).
    """

    def __init__(
        self, model_dir: str, layer: int = 11, device: str = "cpu", batch_size: int = 32
    ) -> None:
        """Load tokenizer and model from ``model_dir`` (no network access).

        Raises ``ValueError`` when the directory is missing or does not hold a
        transformers model and tokenizer.
        """
        path = Path(model_dir)
        if not path.is_dir():
            raise ValueError(f"CodeBERTScore model directory not found: {model_dir!r}")
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{model_dir!r} is not a transformers model directory (no config.json); "
                "point CodeBERTScorer at a saved RoBERTa-family model such as "
                "neulab/codebert-python"
            )
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except Exception as err:  # OSError, ValueError, KeyError... from transformers
            raise ValueError(
                f"cannot load a model and tokenizer from {model_dir!r}: {err}"
            ) from err
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self._torch = torch
        self.tokenizer = tokenizer
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        depth = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        self.layer = max(0, min(int(layer), depth))
        self.max_length = self._max_length()

    def _max_length(self) -> int:
        cfg = self.model.config
        limit = int(getattr(cfg, "max_position_embeddings", 512) or 512)
        if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
            limit -= 2  # RoBERTa positions start after the padding index
        tok_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_limit, int) and 0 < tok_limit < limit:
            limit = tok_limit
        return max(limit, 2)

    def _embed(self, texts: list[str]) -> dict[str, Any]:
        """Unit-normalised embeddings of the scored tokens of each distinct text."""
        torch = self._torch
        out: dict[str, Any] = {}
        ordered = sorted(set(texts), key=len)
        for start in range(0, len(ordered), self.batch_size):
            batch = ordered[start : start + self.batch_size]
            enc = self.tokenizer(
                [t.strip() for t in batch],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
                return_special_tokens_mask=True,
            )
            special = enc.pop("special_tokens_mask")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                hidden = self.model(**enc, output_hidden_states=True).hidden_states[self.layer]
            hidden = torch.nn.functional.normalize(hidden.float(), dim=-1).cpu()
            mask = enc["attention_mask"].cpu().bool() & ~special.bool()
            for i, text in enumerate(batch):
                ids = enc["input_ids"][i].tolist()
                tokens = self.tokenizer.convert_ids_to_tokens(ids)
                keep = [
                    bool(mask[i, j]) and not _punctuation_only(str(tok))
                    for j, tok in enumerate(tokens)
                ]
                out[text] = hidden[i][torch.tensor(keep, dtype=torch.bool)]
        return out

    def score(self, preds: list[str], refs: list[str]) -> dict[str, list[float]]:
        """Score prediction/reference pairs; returns lists keyed precision/recall/f1/f3."""
        _check_lengths(preds, refs)
        result: dict[str, list[float]] = {"precision": [], "recall": [], "f1": [], "f3": []}
        if not preds:
            return result
        emb = self._embed(list(preds) + list(refs))
        for p, r in zip(preds, refs, strict=True):
            ep, er = emb[p], emb[r]
            if ep.shape[0] == 0 or er.shape[0] == 0:
                prec = rec = f1 = f3 = 0.0
            else:
                sim = (ep @ er.T).clamp(-1.0, 1.0)
                prec = float(sim.max(dim=1).values.mean())
                rec = float(sim.max(dim=0).values.mean())
                if prec > 0 and rec > 0:
                    f1 = 2 * prec * rec / (prec + rec)
                    f3 = 10 * prec * rec / (9 * prec + rec)
                else:
                    f1 = f3 = 0.0
            result["precision"].append(prec)
            result["recall"].append(rec)
            result["f1"].append(f1)
            result["f3"].append(f3)
        return result
