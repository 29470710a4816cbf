"""A Lightning callback that sizes a training stage to its deadline from its own measured
throughput (the budgeted run's training planner; the arithmetic is bench/budget.py's)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import lightning as L

from bench.budget import planned_steps, warmup_for

log = logging.getLogger("bench.budget")


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
