"""The wall-clock planner of a budgeted run (bench/reproduce.py): how a budget is split, how
many training steps a stage runs, how many sampling steps the evaluation takes.

The budget counts from the start of the command; the setup is spent first, then what is left
before the deadline (the budget less its ``margin``) is shared phase by phase in the split's
ratio, each phase taking its share of the time *still left when it starts*. Default split
(:data:`DEFAULT_SPLIT`): pre-training 45% (the large snippet sets, where the paper spends most
of its compute), fine-tuning 25% (small pair sets: many epochs of CF and Python already),
evaluation 25% (top-5 of 10 draws for every test item at up to 1200 sampling steps), margin 5%
(never planned: exports, writing results, timings that drift).

A training stage (``bench/stage_planner.py``, a Lightning callback) times its own steps after a
warm-up, then sets ``max_steps`` (and the cosine schedule's end) so that it ends inside its
share. The evaluation (:func:`plan_eval`) takes the largest step count of :data:`EVAL_LADDER`
whose predicted time, from a cost line timed at two small step counts, fits; where even the
smallest does not, the test items that fit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PHASES = ("pretrain", "finetune", "eval")
DEFAULT_SPLIT = {"pretrain": 0.45, "finetune": 0.25, "eval": 0.25, "margin": 0.05}
# Sampling steps tried for the evaluation, most first: the paper's 1200, then respaced counts.
EVAL_LADDER = (1200, 600, 400, 200, 100, 50, 25, 10)


class BudgetError(ValueError):
    """A budget or split that cannot be planned (bench/reproduce.py answers it in one line)."""


def parse_split(text: str | None) -> dict[str, float]:
    """``"45,25,25,5"`` (pre-training, fine-tuning, evaluation, margin; any positive scale) as
    fractions that sum to 1; None: :data:`DEFAULT_SPLIT`."""
    if text is None:
        return dict(DEFAULT_SPLIT)
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        raise BudgetError(f"--split {text!r}: expected four numbers such as 45,25,25,5") from None
    if len(parts) != 4 or any(not math.isfinite(p) or p < 0 for p in parts) or sum(parts) <= 0:
        raise BudgetError(
            f"--split {text!r}: expected four non-negative numbers (pre-training, fine-tuning, "
            "evaluation, margin) such as 45,25,25,5"
        )
    if parts[2] <= 0:
        raise BudgetError(f"--split {text!r}: the evaluation needs a share")
    total = sum(parts)
    return dict(zip((*PHASES, "margin"), (p / total for p in parts), strict=True))


@dataclass
class Budget:
    """``seconds`` of wall-clock from ``start`` (a ``time.monotonic()`` value), shared by
    ``split``. :meth:`phase_deadline` gives each phase its share of the time left when it
    starts."""

    seconds: float
    split: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SPLIT))
    start: float = field(default_factory=time.monotonic)
    clock: Callable[[], float] = time.monotonic

    @property
    def deadline(self) -> float:
        """The end of the planned time: the budget less its margin."""
        return self.start + self.seconds * (1.0 - self.split["margin"])

    @property
    def hard_deadline(self) -> float:
        return self.start + self.seconds

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Planned seconds left (to :attr:`deadline`)."""
        return self.deadline - self.clock()

    def phase_deadline(
        self, phase: str, phases: Sequence[str] = PHASES, end: float | None = None
    ) -> float:
        """When ``phase`` must end: its share, among ``phases`` from it on, of the time left
        before ``end`` (default: :attr:`deadline`)."""
        rest = list(phases)[list(phases).index(phase) :]
        weight = sum(self.split[p] for p in rest)
        share = self.split[phase] / weight if weight > 0 else 0.0
        now = self.clock()
        end = self.deadline if end is None else end
        return now + max(0.0, end - now) * share


def planned_steps(done: int, rate: float, seconds_left: float, safety: float = 0.9) -> int:
    """The stage's total steps: ``done`` so far plus what ``rate`` steps/s fills of
    ``seconds_left`` less the ``safety`` share; never fewer than ``done``."""
    if rate <= 0 or seconds_left <= 0:
        return done
    return done + int(math.floor(seconds_left * rate * safety))


def warmup_for(planned: int, fraction: float) -> int:
    """Warm-up steps of a stage of ``planned`` steps: the config's fraction, at least 1."""
    return max(1, int(round(planned * fraction)))


@dataclass
class EvalPlan:
    """What the evaluation runs: ``steps`` (sampling steps; None for the baseline), the first
    ``items`` test items, and the predicted seconds."""

    steps: int | None
    items: int
    total_items: int
    predicted_s: float
    complete: bool
    note: str


def fit_cost(t1: float, s1: int, t2: float, s2: int) -> tuple[float, float]:
    """(seconds per batch, seconds per step) of a line through two timed batches at ``s1`` and
    ``s2`` steps; never negative (a noisy pair falls back to the slower batch's mean)."""
    per_step = (t2 - t1) / (s2 - s1) if s2 != s1 else 0.0
    if per_step <= 0:
        return 0.0, max(t1, t2) / max(s1, s2)
    return max(0.0, t1 - per_step * s1), per_step


def plan_eval(
    n_items: int,
    batch_size: int,
    per_batch_s: float,
    per_step_s: float | None,
    per_item_s: float,
    seconds: float,
    ladder: Sequence[int] = EVAL_LADDER,
    max_steps: int = 1200,
    safety: float = 1.15,
) -> EvalPlan:
    """The largest step count of ``ladder`` (at most ``max_steps``, the model's T) whose
    predicted time for all ``n_items`` fits ``seconds``: each batch of ``batch_size`` costs
    ``per_batch_s + steps * per_step_s``, each item ``per_item_s`` to score, all times
    ``safety``; if even the smallest does not fit, the smallest on the whole batches that do.
    ``per_step_s`` None: a model that takes no steps (the baseline), every item or those that
    fit."""
    rungs = [None] if per_step_s is None else sorted({min(s, max_steps) for s in ladder})[::-1]

    def cost(steps: int | None, items: int) -> float:
        per_batch = per_batch_s + (steps or 0) * (per_step_s or 0.0)
        return safety * (math.ceil(items / batch_size) * per_batch + items * per_item_s)

    at = lambda steps: "" if steps is None else f" at {steps} sampling steps"  # noqa: E731
    for steps in rungs:
        if cost(steps, n_items) <= seconds:
            larger = steps is not None and steps != max_steps
            note = f"all {n_items} test items{at(steps)}" + (
                f" (the largest of {list(rungs)} that fits)" if larger else ""
            )
            return EvalPlan(steps, n_items, n_items, cost(steps, n_items), True, note)
    steps, items = rungs[-1], min(n_items, batch_size)
    while items < n_items and cost(steps, min(n_items, items + batch_size)) <= seconds:
        items = min(n_items, items + batch_size)
    note = f"only the first {items} of {n_items} test items fit the budget{at(steps)}"
    return EvalPlan(steps, items, n_items, cost(steps, items), items == n_items, note)
