"""Infilling templates: code with holes, laid on the canvas as given tokens and free positions.

A template is code with placeholders:

    <fill>        a hole whose length the model chooses: several lengths (1 .. ``max_fill``
                  tokens) are drawn across the draws and ranked by the model's score, like top-k
    <fill:N>      a hole of exactly N tokens
    <fill:A-B>    a hole of A to B tokens, the model choosing as for <fill>

e.g. ``GreaterThan(<fill>)`` or ``find . -name <fill> -delete``. Any other ``<fill...>`` is an
error (a typo must not be read as code).

Layout on the canvas: the literal text between holes is tokenised piece by piece, so that no
BPE merge crosses a hole boundary; the pieces' tokens are given positions, the holes are free
positions, and after the last piece come the end token and pad (given too: the template fixes
where the code ends). A template that *ends* with ``<fill>`` leaves the rest of the canvas free
instead: N places the end token there, as in plain generation. With several holes, the lengths
of the ``<fill>`` / ``<fill:A-B>`` holes form a bounded set of combinations (at most
``max_combinations``, evenly spread by total length when there are more), one per draw in
turn.

Whitespace: byte-level BPE attaches a space to the token *after* it (``-name x`` is ``-name``,
``Ġx``), so the spaces just before a hole belong to the hole: ``-name <fill>`` is the piece
``-name`` followed by a fill that may start with a space-prefixed token, as the model saw in
training. The spaces after a hole stay with the next piece (`` -delete`` keeps its leading
space and tokenises as it would inside a command). A fixed-length hole never holds an end or
pad token (:attr:`~codefusion.sampling.Known.no_stop`), so decoding never cuts the code before
a given piece.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from codefusion.errors import GenerationError
from codefusion.generator import Candidate, check_prompts, rank_candidates
from codefusion.sampling.request import Known

PLACEHOLDER = re.compile(r"<fill(?::(\d+)(?:-(\d+))?)?>")
_ANY_PLACEHOLDER = re.compile(r"<fill\b[^<>]{0,20}>?", re.IGNORECASE)
DEFAULT_MAX_FILL = 8  # longest length drawn for a <fill> hole
DEFAULT_MAX_COMBINATIONS = 32  # hole-length combinations drawn at most
_MAX_ENUMERATED = 20_000  # combinations enumerated before the spread-out choice


@dataclass(frozen=True)
class Hole:
    """One hole: the lengths it may take (None: runs to the model's end token)."""

    lengths: tuple[int, ...] | None
    spec: str  # as written in the template


@dataclass(frozen=True)
class Template:
    """A parsed template: ``len(pieces) == len(holes) + 1`` literal pieces around the holes."""

    text: str
    pieces: tuple[str, ...]
    holes: tuple[Hole, ...]

    @property
    def open_end(self) -> bool:
        """The template ends with a ``<fill>``: N places the end token."""
        return self.holes[-1].lengths is None


def parse_template(text: str, max_fill: int = DEFAULT_MAX_FILL) -> Template:
    """Pieces and holes of ``text``; a ``GenerationError`` for a template without a hole, an
    unknown placeholder or a zero length."""
    if not isinstance(text, str):
        raise GenerationError(f"the template is a {type(text).__name__}, not text")
    if max_fill < 1:
        raise GenerationError(f"max_fill must be at least 1, got {max_fill}")
    for m in _ANY_PLACEHOLDER.finditer(text):
        if not PLACEHOLDER.match(text, m.start()):
            raise GenerationError(
                f"unknown placeholder {m.group(0)!r} in the template: use <fill>, <fill:N> "
                "or <fill:A-B>"
            )
    pieces, holes, pos = [], [], 0
    for m in PLACEHOLDER.finditer(text):
        # The spaces before a hole are the hole's (see the module doc).
        pieces.append(text[pos : m.start()].rstrip(" "))
        a, b = m.group(1), m.group(2)
        if a is None:
            lengths: tuple[int, ...] | None = tuple(range(1, max_fill + 1))
        else:
            lo, hi = int(a), int(b) if b is not None else int(a)
            if lo < 1 or hi < lo:
                raise GenerationError(
                    f"{m.group(0)}: a hole holds at least 1 token (and A <= B in <fill:A-B>)"
                )
            lengths = tuple(range(lo, hi + 1))
        holes.append(Hole(lengths, m.group(0)))
        pos = m.end()
    if not holes:
        raise GenerationError(
            "the template has no hole: mark what to fill with <fill> (the model chooses the "
            "length) or <fill:N> (N tokens)"
        )
    tail = text[pos:]
    pieces.append(tail)
    if not tail.strip() and holes[-1].spec == "<fill>":
        holes[-1] = Hole(None, "<fill>")  # open end: the model places the end token
        pieces[-1] = ""
    return Template(text, tuple(pieces), tuple(holes))


@dataclass(frozen=True)
class Layout:
    """One arrangement of a template on the canvas: the given tokens and each hole's span."""

    tokens: torch.Tensor  # [C] int64: given ids (anything at free positions)
    given: torch.Tensor  # [C] bool
    no_stop: torch.Tensor  # [C] bool: free positions that must hold a code token
    spans: tuple[tuple[int, int | None], ...]  # per hole: (start, end); end None = open end


class InfillPlan:
    """A template on a model's canvas: its piece tokens and the hole-length combinations."""

    def __init__(
        self,
        template: Template,
        tokenize,  # text -> ids (no special tokens)
        code_len: int,
        eos_id: int,
        pad_id: int,
        max_combinations: int = DEFAULT_MAX_COMBINATIONS,
    ) -> None:
        self.template, self.code_len = template, code_len
        self.eos_id, self.pad_id = eos_id, pad_id
        self.piece_ids = [tokenize(p) if p else [] for p in template.pieces]
        given = sum(len(p) for p in self.piece_ids)
        holes = template.holes
        # An open end needs one position for its first token; a fixed end, one for </s>.
        shortest = sum(h.lengths[0] for h in holes if h.lengths is not None)
        need = given + shortest + 1
        if need > code_len:
            raise GenerationError(
                f"the template needs at least {need} canvas positions ({given} given tokens, "
                f"holes of at least {shortest + template.open_end} tokens, "
                f"{'no' if template.open_end else 'one'} end token) but the model's canvas "
                f"has {code_len}: a hole is longer than the canvas allows"
            )
        # Positions left for the holes of known lengths: the rest is the end token (fixed end)
        # or the open hole's first token (open end).
        room = code_len - given - 1
        choices = [list(h.lengths) for h in holes if h.lengths is not None]
        while math.prod(map(len, choices)) > _MAX_ENUMERATED:  # many holes: shorter ranges
            max(choices, key=len).pop()
        combos = [c for c in itertools.product(*choices) if sum(c) <= room]
        combos.sort(key=lambda c: (sum(c), c))
        if len(combos) > max_combinations:
            idx = torch.linspace(0, len(combos) - 1, max_combinations).round().long().tolist()
            combos = [combos[i] for i in dict.fromkeys(idx)]
        self.combinations: list[tuple[int, ...]] = combos

    def default_draws(self, k: int) -> int:
        """Every combination drawn equally often, at least 2k draws in all."""
        n = len(self.combinations)
        return n * max(1, -(-2 * k // n))

    def layout(self, lengths: Sequence[int]) -> Layout:
        """The canvas of one combination of hole lengths (the open end's hole excluded)."""
        c = self.code_len
        tokens = torch.full((c,), self.pad_id, dtype=torch.long)
        given = torch.zeros(c, dtype=torch.bool)
        no_stop = torch.zeros(c, dtype=torch.bool)
        spans: list[tuple[int, int | None]] = []
        pos, fixed = 0, iter(lengths)
        for i, hole in enumerate(self.template.holes):
            piece = self.piece_ids[i]
            tokens[pos : pos + len(piece)] = torch.tensor(piece, dtype=torch.long)
            given[pos : pos + len(piece)] = True
            pos += len(piece)
            if hole.lengths is None:  # open end: free to the end of the canvas
                no_stop[pos] = True  # at least one token
                spans.append((pos, None))
                return Layout(tokens, given, no_stop, tuple(spans))
            n = next(fixed)
            no_stop[pos : pos + n] = True
            spans.append((pos, pos + n))
            pos += n
        last = self.piece_ids[-1]
        tokens[pos : pos + len(last)] = torch.tensor(last, dtype=torch.long)
        tokens[pos + len(last)] = self.eos_id  # the template's end: </s>, then pad
        given[pos:] = True
        return Layout(tokens, given, no_stop, tuple(spans))

    def draws(self, num_draws: int) -> tuple[Known, list[Layout]]:
        """Given positions for ``num_draws`` draws (draw j: combination j mod their number)."""
        combos = self.combinations
        layouts = [self.layout(combos[j % len(combos)]) for j in range(num_draws)]
        known = Known(
            mask=torch.stack([lo.given for lo in layouts]),
            tokens=torch.stack([lo.tokens for lo in layouts]),
            no_stop=torch.stack([lo.no_stop for lo in layouts]),
        )
        return known, layouts


def fill_ids(row: Sequence[int], layout: Layout, stop_ids: Sequence[int]) -> list[list[int]]:
    """Each hole's ids in one generated canvas row (an open end's up to the first stop)."""
    out = []
    for start, end in layout.spans:
        if end is None:
            end = start
            while end < len(row) and row[end] not in stop_ids:
                end += 1
        out.append(list(row[start:end]))
    return out


@dataclass(frozen=True)
class InfillCandidate(Candidate):
    """An infilled program, its score, and the text of each hole (spaces kept)."""

    fills: tuple[str, ...] = ()


class Infilling:
    """``infill`` for a diffusion generator whose ``draw(ids, mask, n, seed, options, trace_at,
    known=...)`` keeps the ``known`` positions (CodeFusion, the masked model)."""

    def infill_plan(self, template: str, max_fill: int = DEFAULT_MAX_FILL) -> InfillPlan:
        """The template parsed and laid on this model's canvas (``GenerationError`` when it
        has no hole, an unknown placeholder, or does not fit)."""
        cfg = self.config
        return InfillPlan(
            parse_template(template, max_fill), self.tokenizer.ids, cfg.code_len, cfg.eos_id,
            cfg.pad_id,
        )  # fmt: skip

    def infill_draws(
        self,
        template: str,
        prompt: str,
        num_draws: int | None = None,
        seed: int = 0,
        max_fill: int = DEFAULT_MAX_FILL,
        trace_at: set[int] | None = None,
        allow_empty: bool = False,
        **options,
    ):
        """Raw infilling draws, unranked, and each draw's layout (``num_draws`` None: every
        combination of hole lengths equally often, at least 10 draws)."""
        import torch

        opts = self.options(**options)
        plan = self.infill_plan(template, max_fill)
        n = plan.default_draws(5) if num_draws is None else num_draws
        if n < 1:
            raise GenerationError(f"num_draws must be at least 1, got {n}")
        known, layouts = plan.draws(n)
        ids, mask = self.encode_prompts(check_prompts([prompt], allow_empty))
        with torch.no_grad():
            return self.draw(ids, mask, n, seed, opts, trace_at, known=known), layouts

    def infill(
        self,
        template: str,
        prompt: str,
        k: int = 5,
        num_draws: int | None = None,
        seed: int = 0,
        max_fill: int = DEFAULT_MAX_FILL,
        syntax_rank: str | None = None,
        allow_empty: bool = False,
        rank: str = "score",
        **options,
    ) -> list[InfillCandidate]:
        """Fill the holes of ``template`` under ``prompt``: the top-k programs, best first.

        ``<fill:N>`` holds exactly N tokens; ``<fill>`` takes 1 to ``max_fill`` tokens, the
        lengths (with several holes, a bounded set of their combinations) drawn in turn across
        the draws and ranked by the model's score with everything else, like top-k. Every
        token of the template's text is kept, at its place; the code ends where the template
        does (unless it ends with ``<fill>``: then the model ends it). ``num_draws`` None:
        every combination equally often, at least ``2k`` draws. Options as for ``generate``.
        See :mod:`codefusion.infill` for the template syntax and the tokenisation rules."""
        if k < 1:
            raise GenerationError(f"k must be at least 1, got {k}")
        plan = self.infill_plan(template, max_fill)
        n = plan.default_draws(k) if num_draws is None else num_draws
        if n < k:
            raise GenerationError(f"k={k} is larger than the number of draws ({n})")
        out, layouts = self.infill_draws(
            template, prompt, n, seed, max_fill, allow_empty=allow_empty, **options
        )
        stops = (self.config.eos_id, self.config.pad_id)
        fills: dict[str, tuple[str, ...]] = {}
        codes = []
        for row, layout in zip(out.tokens.tolist(), layouts, strict=True):
            code = self.tokenizer.decode(row)
            codes.append(code)
            fills.setdefault(code, tuple(map(self._raw_text, fill_ids(row, layout, stops))))
        ranked = rank_candidates(codes, out.scores.tolist(), k, syntax_rank, rank)
        return [InfillCandidate(c.code, c.score, fills[c.code]) for c in ranked]

    def _raw_text(self, ids: list[int]) -> str:
        return self.tokenizer.hf.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
