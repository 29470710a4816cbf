"""The evaluation of a budgeted run: its cost measured before training (sampling costs the same
whatever the weights), planned into the time left (bench/budget.py), and run by the harness
(eval/harness.py) with that deadline."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.budget import EVAL_LADDER, Budget, EvalPlan, fit_cost, plan_eval

log = logging.getLogger("bench.reproduce")
EVAL_PROBE_STEPS = (2, 20)  # the two step counts the evaluation's cost line is timed at


def _timed(fn: Callable[[], Any], dev) -> tuple[Any, float]:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.monotonic()
    out = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return out, time.monotonic() - t0


def probe_eval(
    gen,
    lang: str,
    examples: list,
    batch_size: int,
    probe_steps=EVAL_PROBE_STEPS,
    share_s: float | None = None,
) -> dict[str, Any]:
    """Time the generation of the first batch (after warming every batch shape the evaluation
    will meet: on CUDA each is compiled and captured once) and the scoring of its items:
    CodeFusion's cost line (``per_batch_s`` + ``per_step_s`` x steps), the baseline's
    ``per_batch_s``, and ``score_per_item_s``. ``seconds``: what the timing itself took,
    warm-up excluded. Where the first batch says the second would take over a tenth of the
    evaluation's ``share_s``, the second is timed at 3x the first's steps instead."""
    from codefusion.scoring.evaluate import score
    from codefusion.tokenizer import prompt_bucket

    dev = gen.device
    chunks = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    prompts = [[e.prompt for e in c] for c in chunks]
    takes_steps = gen.takes("steps")
    probe: dict[str, Any] = {"takes_steps": takes_steps}

    def generate(ps: list[str], **opts: Any):
        return gen.generate(ps, k=5, seed=0, allow_empty=True, **opts)

    t0 = time.monotonic()
    if takes_steps and dev.type == "cuda":
        # One sampler graph per (rows, prompt bucket): each compiled and captured before
        # anything is timed. The first shape's time says what compiling costs here; where all
        # of them would take over a quarter of the evaluation's share, the sampler runs
        # uncompiled (still captured as a CUDA graph), as run.json says.
        shapes: dict[tuple[int, int], list[str]] = {}
        for ps in prompts:
            width = gen.tokenizer.encode_prompts(ps, gen.max_prompt_len)[0].shape[1]
            shapes.setdefault((len(ps), prompt_bucket(width, gen.max_prompt_len)), ps)
        first = next(iter(shapes.values()))
        t_first = time.monotonic()
        generate(first, steps=2)
        per_shape = time.monotonic() - t_first
        compiled = os.environ.get("CODEFUSION_COMPILE_SAMPLER", "1") not in ("0", "")
        if compiled and share_s is not None and per_shape * len(shapes) > 0.25 * share_s:
            os.environ["CODEFUSION_COMPILE_SAMPLER"] = "0"
            compiled = False
            generate(first, steps=2)  # this shape again, uncompiled
        for ps in list(shapes.values())[1:]:
            generate(ps, steps=2)
        probe["shapes"] = [list(k) for k in shapes]
        probe["sampler_compile"] = {
            "compiled": compiled,
            "first_shape_s": round(per_shape, 3),
            "shapes": len(shapes),
            "rule": "compile unless shapes x first_shape_s > 25% of the evaluation's share",
        }
    else:
        generate(prompts[0][:2], **({"steps": 2} if takes_steps else {}))
    probe["warmup_s"] = round(time.monotonic() - t0, 3)
    t0 = time.monotonic()
    first = prompts[0]
    if takes_steps:
        s1, s2 = probe_steps
        _, t1 = _timed(lambda: generate(first, steps=s1), dev)
        if share_s is not None and t1 * s2 / s1 > 0.1 * share_s:
            s2 = min(s2, 3 * s1)  # a slow device: a shorter second batch (CPU)
        cands, t2 = _timed(lambda: generate(first, steps=s2), dev)
        per_batch, per_step = fit_cost(t1, s1, t2, s2)
        probe.update(batch_s={str(s1): round(t1, 4), str(s2): round(t2, 4)})
        probe.update(per_batch_s=round(per_batch, 4), per_step_s=round(per_step, 6))
    else:
        cands, per_batch = _timed(lambda: generate(first), dev)
        probe["per_batch_s"] = round(per_batch, 4)
    t1 = time.monotonic()
    score(lang, chunks[0], cands)
    probe["score_per_item_s"] = round((time.monotonic() - t1) / len(chunks[0]), 5)
    probe["seconds"] = round(time.monotonic() - t0, 3)
    return probe


def plan_from_probe(
    probe: dict[str, Any],
    n_items: int,
    batch_size: int,
    seconds: float,
    max_steps: int,
    ladder=EVAL_LADDER,
) -> EvalPlan:
    """The evaluation that fits ``seconds`` by ``probe``'s costs (:func:`probe_eval`):
    CodeFusion's largest step count of ``ladder`` (at most ``max_steps``, the model's T), the
    baseline's items."""
    per_step = probe["per_step_s"] if probe["takes_steps"] else None
    return plan_eval(
        n_items,
        batch_size,
        probe["per_batch_s"],
        per_step,
        probe["score_per_item_s"],
        seconds,
        ladder,
        max_steps,
    )


def max_steps(gen) -> int:
    """Sampling steps at most: CodeFusion's T; the masked model's canvas length (one position
    unmasked per step: more steps change nothing); 0 for the baseline, which takes none."""
    if not gen.takes("steps"):
        return 0
    return int(getattr(gen.config, "diffusion_steps", 0) or gen.config.code_len)


def evaluate(
    gen,
    examples: list,
    total: int,
    lang: str,
    data: Path,
    out: Path,
    system: Callable[[EvalPlan], str],
    budget: Budget,
    batch_size: int,
    progress: bool,
    probe: dict[str, Any],
    ladder=EVAL_LADDER,
) -> dict[str, Any]:
    """Plan the evaluation into the time left by ``probe``'s costs (measured before training:
    sampling costs the same whatever the weights) and run the harness (eval/harness.py:
    predictions.jsonl, metrics.json, table.md) with that deadline."""
    from codefusion.scoring.evaluate import find_nl2bash_subset
    from eval.harness import run_eval

    start = budget.clock()
    nl2bash = find_nl2bash_subset(data) if lang == "bash" else None
    end = budget.deadline - write_reserve(len(examples))
    plan = plan_from_probe(
        probe, len(examples), batch_size, end - budget.clock(), max_steps(gen), ladder
    )
    log.info("evaluation: %s (predicted %.0f s)", plan.note, plan.predicted_s)
    options = {} if plan.steps is None else {"steps": plan.steps}
    t0 = budget.clock()
    # Every item is offered: the harness starts no batch that the last one's duration says
    # would end after the deadline, so a pessimistic plan (a probe timed under load) still
    # evaluates what fits.
    metrics = run_eval(
        gen,
        lang,
        examples,
        out,
        system(plan),
        batch_size=batch_size,
        progress=progress,
        nl2bash=nl2bash,
        deadline=end,
        **options,
    )
    done = metrics["n"]
    return {
        "steps": plan.steps,
        "ladder": list(ladder) if plan.steps is not None else None,
        "items": done,
        "test_items": total,
        "complete": done == total,
        "plan": plan.note,
        "items_planned": plan.items,
        "predicted_s": round(plan.predicted_s, 2),
        "generation_s": metrics["generation_seconds"],
        "run_s": round(budget.clock() - t0, 2),
        "wall_s": round(budget.clock() - start, 2),
        "batch_size": batch_size,
        "num_draws": "2k = 10" if plan.steps is not None else "k = 5 beams",
        "stopped_at_deadline": metrics.get("stopped_at_deadline"),
    }


def write_reserve(n_items: int) -> float:
    """Seconds kept after the evaluation for writing its files (scoring is in the plan)."""
    return 2.0 + 0.002 * n_items
