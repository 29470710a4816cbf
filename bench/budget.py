"""The wall-clock planner of a budgeted reproduction (bench/reproduce.py): how the budget is
split, how many training steps a stage runs, and how many sampling steps the evaluation takes.

The budget counts from the start of the command. What the setup takes (imports, data, the
tokenizer) is spent first; what is left before the final deadline (the budget less its
``margin``) is shared out phase by phase in the ratio of the split, each phase getting its
share of the time *still left when it starts*: a stage that ends early leaves its time to the
ones after it. The default split (:data:`DEFAULT_SPLIT`):

- pre-training 45%: the stage on the large snippet sets (CF 3.5K distinct snippets, Bash and
  Python tens of thousands) at batch 384-512, where the paper spends most of its compute;
- fine-tuning 25%: the (prompt, code) sets are small (CF 709 rows, Bash about 10K, Python about
  2.4K), so at batch 64 a quarter of the budget is already many epochs of CF and Python;
- evaluation 25%: top-5 of 10 draws for every test item at up to 1200 sampling steps (Bash:
  2,522 items, the largest cost of the three);
- margin 5%: never planned: the export, writing the results, Python's exit, and timings that
  drift after they were measured.

A training stage (:class:`StagePlanner`, a Lightning callback) measures its own throughput:
after a few warm-up steps (first batches, allocator, lazy initialisation, compilation) it times
steps until ``probe_seconds`` have passed, then sets ``max_steps`` so that the stage ends
``safety`` inside its share, and scales the warm-up to the steps that will run (the config's
own warm-up fraction): the cosine schedule ends where training ends. Its deadline is checked
after every step as well, and Lightning's ``max_time`` stands behind it.

The evaluation (:func:`choose_eval_steps`) times one generation batch at two small step counts
(a fixed cost per batch plus a cost per step), and takes the largest step count of
:data:`EVAL_LADDER` whose predicted total fits; where even the smallest does not, it evaluates
the test items that fit (said in the output).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L

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
        per_step = max(t1, t2) / max(s1, s2)
        return 0.0, per_step
    return max(0.0, t1 - per_step * s1), per_step


def choose_eval_steps(
    n_items: int,
    batch_size: int,
    per_batch_s: float,
    per_step_s: float,
    per_item_s: float,
    seconds: float,
    ladder: Sequence[int] = EVAL_LADDER,
    max_steps: int = 1200,
    safety: float = 1.15,
) -> EvalPlan:
    """The largest step count of ``ladder`` (at most ``max_steps``, the model's T) whose
    predicted time for all ``n_items`` fits ``seconds``: each batch of ``batch_size`` costs
    ``per_batch_s + steps * per_step_s``, each item ``per_item_s`` to score, all times
    ``safety``. If even the smallest does not fit, the smallest on the items that fit."""
    rungs = sorted({min(s, max_steps) for s in ladder}, reverse=True)

    def cost(steps: int, items: int) -> float:
        batches = math.ceil(items / batch_size)
        return safety * (batches * (per_batch_s + steps * per_step_s) + items * per_item_s)

    for steps in rungs:
        if cost(steps, n_items) <= seconds:
            note = f"all {n_items} test items at {steps} sampling steps" + (
                "" if steps == max_steps else f" (the largest of {list(rungs)} that fits)"
            )
            return EvalPlan(steps, n_items, n_items, cost(steps, n_items), True, note)
    steps = rungs[-1]
    items = items_that_fit(n_items, batch_size, lambda n: cost(steps, n), seconds)
    return EvalPlan(
        steps,
        items,
        n_items,
        cost(steps, items),
        items == n_items,
        f"only the first {items} of {n_items} test items fit the budget, at {steps} steps",
    )


def items_that_fit(
    n_items: int, batch_size: int, cost: Callable[[int], float], seconds: float
) -> int:
    """The most items (whole batches, at least one batch) whose ``cost`` fits ``seconds``."""
    items = min(n_items, batch_size)
    while items < n_items and cost(min(n_items, items + batch_size)) <= seconds:
        items = min(n_items, items + batch_size)
    return items


def plan_batches(
    n_items: int, batch_size: int, per_batch_s: float, per_item_s: float, seconds: float
) -> EvalPlan:
    """The baseline's plan (no step count): every item if its batches fit, else those that do."""

    def cost(items: int) -> float:
        return 1.15 * (math.ceil(items / batch_size) * per_batch_s + items * per_item_s)

    if cost(n_items) <= seconds:
        return EvalPlan(None, n_items, n_items, cost(n_items), True, f"all {n_items} test items")
    items = items_that_fit(n_items, batch_size, cost, seconds)
    return EvalPlan(
        None,
        items,
        n_items,
        cost(items),
        False,
        f"only the first {items} of {n_items} test items fit the budget",
    )


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StagePlanner(L.Callback):
    """Sizes a training stage to its deadline from its own measured throughput.

    Steps ``1..warm_steps`` are not timed (first batches, lazy initialisation, compilation);
    from there steps are timed (the device synchronised at both ends) until at least
    ``probe_steps`` steps and ``probe_seconds`` have passed. Then the stage's ``max_steps``
    (the Trainer's, the module's: the cosine schedule's end) is set from the measured rate so
    that it ends ``end_reserve_s`` (the export) before ``deadline``, less the ``safety`` share,
    and the module's warm-up to ``warmup_fraction`` of it. ``cap`` bounds the plan (the smoke
    mode's few steps). After every step the deadline is checked: training stops once it is
    reached, whatever was planned. ``flops(model, batch_size, prompt_len)`` (model FLOPs of one
    training step) and ``peak_flops`` give the MFU (None where either is unknown).

    :attr:`report` holds what happened: the rate, the plan, the steps run, wall-clock,
    tokens/s (code tokens: the batches' rows x code_len per step) and MFU."""

    def __init__(
        self,
        deadline: float,
        warmup_fraction: float,
        batch_size: int,
        warm_steps: int = 3,
        probe_steps: int = 5,
        probe_seconds: float = 3.0,
        safety: float = 0.9,
        end_reserve_s: float = 2.0,
        cap: int | None = None,
        flops: Callable[[Any, int, int], float] | None = None,
        peak_flops: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sync: Callable[[], None] = _sync,
    ) -> None:
        self.deadline, self.warmup_fraction = deadline, warmup_fraction
        self.batch_size, self.code_len, self.model = batch_size, 0, None
        self.warm_steps, self.probe_steps = max(1, warm_steps), max(1, probe_steps)
        self.probe_seconds, self.safety, self.end_reserve_s = probe_seconds, safety, end_reserve_s
        self.cap, self.flops, self.peak_flops = cap, flops, peak_flops
        self.clock, self.sync = clock, sync
        self.phase = "warm"
        self.t_fit = self.t_train = self.t_probe = None
        self.n_probe = 0
        self.prompt_widths: list[int] = []
        self.rows: list[int] = []  # the batches' real rows (a small set gives fewer than asked)
        self.report: dict[str, Any] = {}

    # --- Lightning hooks ---------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t_fit = self.clock()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t_train = self.clock()
        self.model = pl_module.model
        self.code_len = int(self.model.config.code_len)
        if self.cap is not None:  # never more than the cap, even before the plan
            self._set_max_steps(trainer, pl_module, min(self.cap, trainer.max_steps))

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if self.phase in ("probe", "run") and len(self.rows) < 1000:  # host-side shapes
            self.prompt_widths.append(int(batch.prompt_ids.shape[1]))
            self.rows.append(int(batch.prompt_ids.shape[0]))

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, idx: int) -> None:
        n = trainer.global_step
        now = self.clock()
        if self.phase == "warm" and n >= self.warm_steps:
            self.sync()
            self.t_probe, self.n_probe, self.phase = self.clock(), n, "probe"
        elif self.phase == "probe":
            timed = n - self.n_probe
            if timed >= self.probe_steps and now - self.t_probe >= self.probe_seconds:
                self.sync()
                self._plan(trainer, pl_module, n, timed / (self.clock() - self.t_probe))
        if self.clock() >= self.deadline - self.end_reserve_s and not trainer.should_stop:
            if n < trainer.max_steps:
                log.warning("%s: deadline reached at step %d; stopping", self._stage(trainer), n)
                self.report["stopped_by"] = "deadline"
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sync()
        end = self.clock()
        steps = trainer.global_step
        r = self.report
        r.setdefault("stopped_by", "max_steps" if steps >= trainer.max_steps else "max_time")
        r["steps"] = steps
        r["train_s"] = round(end - (self.t_train or end), 3)
        r["setup_s"] = round((self.t_train or end) - (self.t_fit or end), 3)
        if self.t_probe is not None and steps > self.n_probe and end > self.t_probe:
            # Steady state: from the end of the warm-up steps to the end of training.
            rate = (steps - self.n_probe) / (end - self.t_probe)
            r["steps_per_s"] = round(rate, 4)
            r["rows_per_step"] = round(self._rows(), 1)
            r["tokens_per_s"] = round(rate * self._rows() * self.code_len, 1)
            r["mfu"] = self._mfu(rate)
        else:
            r.setdefault("steps_per_s", None)
            r.setdefault("tokens_per_s", None)
            r.setdefault("mfu", None)

    # --- the plan ----------------------------------------------------------------------------
    def _plan(self, trainer: L.Trainer, pl_module: Any, done: int, rate: float) -> None:
        self.phase = "run"
        left = self.deadline - self.clock() - self.end_reserve_s
        steps = planned_steps(done, rate, left, self.safety)
        if self.cap is not None:
            steps = min(steps, self.cap)
        steps = max(steps, done)
        self._set_max_steps(trainer, pl_module, steps)
        pl_module.warmup_steps = warmup_for(steps, self.warmup_fraction)
        self.report.update(
            probe_steps=done - self.n_probe,
            probe_rate_steps_per_s=round(rate, 4),
            planned_steps=steps,
            warmup_steps=pl_module.warmup_steps,
            planned_at_step=done,
            seconds_left_at_plan=round(left, 2),
        )
        log.info(
            "%s: %.2f steps/s measured over %d steps; planned %d steps (warm-up %d) in the "
            "%.0f s left",
            self._stage(trainer),
            rate,
            done - self.n_probe,
            steps,
            pl_module.warmup_steps,
            left,
        )
        if steps <= done:
            trainer.should_stop = True

    def _set_max_steps(self, trainer: L.Trainer, pl_module: Any, steps: int) -> None:
        trainer.fit_loop.epoch_loop.max_steps = steps
        pl_module.max_steps = steps  # the cosine decay's end and the module's last-step read
        from train.progress import StepProgressBar

        for cb in trainer.callbacks:  # the progress bar spans the planned steps
            bar = getattr(cb, "_train_progress_bar", None)
            if isinstance(cb, StepProgressBar) and bar is not None:
                bar.total = steps
                bar.refresh()

    def _rows(self) -> float:
        return sum(self.rows) / len(self.rows) if self.rows else float(self.batch_size)

    def _mfu(self, rate: float) -> float | None:
        if not self.flops or not self.peak_flops or not self.prompt_widths:
            return None
        width = round(sum(self.prompt_widths) / len(self.prompt_widths))
        flops = self.flops(self.model, max(1, round(self._rows())), width)
        return round(flops * rate / self.peak_flops, 4)

    @staticmethod
    def _stage(trainer: L.Trainer) -> str:
        root = getattr(trainer, "default_root_dir", None) or "stage"
        return str(root).rstrip("/").rsplit("/", 1)[-1]


# --- the lease: which command runs which benchmark, for how long ----------------------------


@dataclass(frozen=True)
class Job:
    """One ``bench/reproduce.py`` run: ``benchmark`` and ``preset`` within ``minutes`` (its
    ``--budget-minutes``; for the smoke mode, which has no budget, the time it is expected to
    take), results under ``$OUT/<name>``."""

    name: str
    benchmark: str
    preset: str
    minutes: float
    smoke: bool = False

    def command(self) -> str:
        if self.smoke:
            return (
                f"python3 bench/reproduce.py --smoke --benchmark {self.benchmark} "
                f"--preset {self.preset} --out $OUT/{self.name} --no-progress"
            )
        return (
            f"python3 bench/reproduce.py --benchmark {self.benchmark} --preset {self.preset} "
            f"--budget-minutes {self.minutes:g} --out $OUT/{self.name} --no-progress"
        )

    @property
    def files(self) -> int:
        return 1 if self.smoke else 4  # smoke.json; metrics, table, predictions, run


@dataclass(frozen=True)
class Lease:
    """The GPU lease's limits (/work/.library/device/README.md) and what a call costs beside its
    commands: the machine's start (``start_minutes``, once: later calls find it warm when each
    follows the last within its 30 s), and per call the transfers and the wheel install
    (``call_overhead_minutes``)."""

    total_minutes: float = 30.0
    command_minutes: float = 10.0
    files_per_call: int = 8
    start_minutes: float = 2.0
    call_overhead_minutes: float = 0.5


# The plan the README gives: the smoke check first (it finds every GPU-only failure before real
# time is spent), then one call per benchmark running CodeFusion and its AR baseline (8 result
# files: the most that come back from one call). Bash gets the most: its 2,522 test items and
# 10K fine-tuning rows; the baselines less: beam search needs no 1200-step sampling.
PAPER_PLAN: tuple[tuple[Job, ...], ...] = (
    (Job("smoke", "cf", "paper", 2.0, smoke=True),),
    (Job("cf", "cf", "paper", 4.0), Job("cf-ar", "cf", "ar-paper", 2.5)),
    (Job("bash", "bash", "paper", 5.0), Job("bash-ar", "bash", "ar-paper", 3.5)),
    (Job("python", "python", "paper", 4.5), Job("python-ar", "python", "ar-paper", 3.0)),
)

# What every call runs first: the carried wheels (bashlex), the checkout on the path, the
# carried data (bench/prepare_carry.py).
CALL_PREFIX = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "
    "/tmp/site .carry/wheels/*.whl && export PYTHONPATH=/tmp/site:. "
    "CODEFUSION_DATA=.carry/data PYTHONUNBUFFERED=1 && "
)


def call_command(jobs: Sequence[Job]) -> str:
    """One device call's command line: the prefix, then the jobs one after another (``;``: a
    failed run leaves the next its time)."""
    return CALL_PREFIX + "; ".join(j.command() for j in jobs)


def check_lease(
    plan: Sequence[Sequence[Job]] = PAPER_PLAN, lease: Lease = Lease()
) -> dict[str, Any]:
    """The plan's minutes per call and in all, checked against ``lease``: a
    :class:`BudgetError` naming the first limit it breaks (a call over the per-command limit
    or with too many result files, the whole over the session's device time, a benchmark or
    system missing)."""
    calls = []
    for i, jobs in enumerate(plan, 1):
        minutes = sum(j.minutes for j in jobs) + lease.call_overhead_minutes
        files = sum(j.files for j in jobs)
        names = [j.name for j in jobs]
        if minutes > lease.command_minutes:
            raise BudgetError(
                f"call {i} ({', '.join(names)}) needs {minutes:g} minutes with its overhead: "
                f"over the {lease.command_minutes:g}-minute limit of one command"
            )
        if files > lease.files_per_call:
            raise BudgetError(
                f"call {i} ({', '.join(names)}) writes {files} result files: over the "
                f"{lease.files_per_call} that come back from one call"
            )
        command = call_command(jobs)
        if len(command) > 2000:
            raise BudgetError(f"call {i}'s command is {len(command)} characters: over 2,000")
        calls.append({"jobs": names, "minutes": minutes, "files": files, "command": command})
    total = lease.start_minutes + sum(c["minutes"] for c in calls)
    if total > lease.total_minutes:
        raise BudgetError(
            f"the plan needs {total:g} minutes of device time (machine start "
            f"{lease.start_minutes:g}, calls {total - lease.start_minutes:g}): over the "
            f"{lease.total_minutes:g} minutes of one session"
        )
    runs = {(j.benchmark, j.preset.startswith("ar-")) for jobs in plan for j in jobs if not j.smoke}
    missing = [
        f"{b}{' AR baseline' if ar else ''}"
        for b in ("cf", "bash", "python")
        for ar in (False, True)
        if (b, ar) not in runs
    ]
    if missing:
        raise BudgetError(f"the plan runs no {', '.join(missing)}")
    if not any(j.smoke for j in plan[0]):
        raise BudgetError("the plan's first call must be the smoke check")
    return {"calls": calls, "total_minutes": total, "slack_minutes": lease.total_minutes - total}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog="python bench/budget.py",
        description="Print the GPU lease plan of the paper reproduction (which benchmark in "
        "which device call, how many minutes each, the exact commands) and check it against "
        "the lease's limits; exits 2 naming the limit it breaks.",
    )
    p.add_argument("--total-minutes", type=float, default=Lease.total_minutes)
    p.add_argument("--command-minutes", type=float, default=Lease.command_minutes)
    p.add_argument(
        "--start-minutes",
        type=float,
        default=Lease.start_minutes,
        help="the machine's start, counted once (default %(default)s)",
    )
    p.add_argument(
        "--call-overhead-minutes",
        type=float,
        default=Lease.call_overhead_minutes,
        help="transfers and the wheel install, per call (default %(default)s)",
    )
    args = p.parse_args(argv)
    lease = Lease(
        args.total_minutes,
        args.command_minutes,
        Lease.files_per_call,
        args.start_minutes,
        args.call_overhead_minutes,
    )
    try:
        plan = check_lease(PAPER_PLAN, lease)
    except BudgetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"machine start: {lease.start_minutes:g} min")
    for i, c in enumerate(plan["calls"], 1):
        print(f"call {i}: {', '.join(c['jobs'])}: {c['minutes']:g} min, {c['files']} files")
        print(f"  {c['command']}")
    print(
        f"total {plan['total_minutes']:g} of {lease.total_minutes:g} minutes "
        f'({plan["slack_minutes"]:g} to spare); every call: timeout_s 600, carry [".carry"]'
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
