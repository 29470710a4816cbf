"""The LightningModule: one training step = the objective on one batch. Nothing stage- or
architecture-specific lives here: the stages differ only in their data (train/data.py) and
their starting weights, the architectures in their model and objective (train/objectives.py)."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from codefusion.batch import Batch
from train.resume import capture_rng_state, restore_rng_state, seed_rank

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/inf loss and was configured to stop."""


class TrainingModule(L.LightningModule):
    """A model, its objective (train/objectives.py), AdamW and a warm-up + cosine schedule.

    ``objective(model, batch)`` returns the loss terms (``"loss"`` among them), and
    ``diagnostics(model, objective, batch, generator)`` (the architecture's, see
    train/objectives.py) what validation logs beside them."""

    # The stage settings (train/config.py: StageConfig) the module takes, by name.
    STAGE_KEYS = (
        "lr",
        "weight_decay",
        "warmup_steps",
        "max_steps",
        "on_nan",
        "log_every",
        "ckpt_every",
    )

    def __init__(
        self,
        model: nn.Module,
        objective: nn.Module,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        max_steps: int = 1000,
        on_nan: str = "stop",
        diagnostics: Callable[..., dict[str, float]] | None = None,
        log_every: int = 1,
        ckpt_every: int | None = None,
    ) -> None:
        super().__init__()
        self.model, self.objective = model, objective
        self.diagnostics = diagnostics
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.max_steps, self.on_nan = warmup_steps, max_steps, on_nan
        self.log_every, self.ckpt_every = max(1, log_every), ckpt_every
        self.skipped_nonfinite = 0

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int):
        if isinstance(batch, Batch) and device.type == "cuda":
            # Lightning moves a custom batch with a blocking copy; from pinned memory (data
            # workers, train/data.py) this one overlaps the previous step's kernels.
            return batch.to(device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    # --- exact resume (train/resume.py) ------------------------------------------------------
    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        # The data position counts this batch already: a checkpoint written at the end of this
        # batch (ModelCheckpoint runs before this module's on_train_batch_end) follows its step.
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_position"):
            dm.set_position(self.current_epoch, batch_idx + 1)

    def setup(self, stage: str) -> None:
        # Lightning has just seeded every rank alike (DDP's setup re-seeds with the run's seed);
        # each rank then draws its own diffusion steps and noise. A resumed run restores each
        # rank's own state after this (on_load_checkpoint).
        if self.trainer.world_size > 1:
            seed_rank(torch.initial_seed(), self.global_rank)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = capture_rng_state()
        if self.trainer.world_size > 1:
            # Every rank runs this hook (only rank zero writes the file): gather every rank's
            # RNG state so that each resumes its own stream.
            states: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(states, checkpoint["rng_states"])
            checkpoint["rng_states_per_rank"] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        per_rank = checkpoint.get("rng_states_per_rank")
        if per_rank is not None and len(per_rank) == self.trainer.world_size:
            restore_rng_state(per_rank[self.global_rank])
        elif "rng_states" in checkpoint:
            restore_rng_state(checkpoint["rng_states"])
        # EMAWeightAveraging keeps the average in "state_dict", the raw weights beside it, and
        # copies the average into the model at on_train_end, which Lightning skips when the
        # checkpoint is already at max_steps: then on_fit_end does it (see below).
        self._ema_final = checkpoint["state_dict"] if "current_model_state" in checkpoint else None

    def on_fit_end(self) -> None:
        final, self._ema_final = getattr(self, "_ema_final", None), None
        if final is not None:  # training was skipped: export the averaged weights, as a run would
            self.load_state_dict(final)

    def on_train_start(self) -> None:
        self._ema_final = None  # training runs: the EMA callback's on_train_end does the copy

    def reads_loss(self) -> bool:
        """Whether this step reads its loss on the host (a device sync on a GPU).

        ``on_nan: skip`` needs the verdict before the backward of every step. Otherwise the
        step runs without a host read, and the loss is read (logged and checked) only where
        Lightning writes logs (``(step + 1) % log_every == 0``), before a checkpoint is written
        and at the last step: a NaN stops the run at the next such step at the latest, never
        after it reached a checkpoint or the export (NaN weights give a NaN loss from then on).
        """
        if self.on_nan == "skip":
            return True
        done = self.global_step + 1  # optimizer steps after this one
        return (
            done % self.log_every == 0
            or (self.ckpt_every is not None and done % self.ckpt_every == 0)
            or done >= self.max_steps
        )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        out = self.objective(self.model, batch)
        loss = out["loss"]
        if not self.reads_loss():
            return loss  # the hot path: nothing read on the host, nothing logged
        terms = torch.stack([v.detach().float() for v in out.values()])
        if self.trainer.world_size > 1:
            # One all-reduce of a few scalars per step (small beside the gradients' own) gives
            # the logs the terms of the global batch, the one the optimizer steps on, and every
            # rank the same verdict on a non-finite loss: a NaN anywhere makes the mean NaN
            # everywhere. A rank that skipped or stopped alone would leave the others waiting in
            # DDP's gradient all-reduce. (Every rank reads on the same steps: reads_loss.)
            terms = self.trainer.strategy.reduce(terms, reduce_op="mean")
        stats = dict(zip(out, terms, strict=True))
        if not torch.isfinite(stats["loss"]):
            step = self.global_step
            if self.on_nan == "skip":
                self.skipped_nonfinite += 1
                log.warning(
                    "non-finite loss at step %d: step skipped (%d so far)",
                    step,
                    self.skipped_nonfinite,
                )
                self.log("train/skipped_nonfinite", float(self.skipped_nonfinite))
                if self.trainer.world_size == 1:
                    return None  # no backward: AdamW leaves parameters without gradients alone
                # Lightning refuses None from a DDP training_step, and every rank has to join
                # the backward's all-reduce: back-propagate a throwaway loss, then drop its
                # gradients before the step (on_before_optimizer_step), as on one process.
                self._drop_grads = True
                return loss * 0
            every = (
                "" if self.log_every == 1 else f" (the loss is read every {self.log_every} steps)"
            )
            raise NonFiniteLossError(
                f"non-finite loss ({stats['loss'].item()}) at step {step}{every}; "
                "stopping (on_nan=stop)"
            )
        if (self.global_step + 1) % self.log_every == 0:
            # Already global (see above): logged by rank zero without a further sync.
            self.log_dict(
                {f"train/{k}": v for k, v in stats.items()},
                prog_bar=False,
                batch_size=batch.code_ids.shape[0],
            )
            self.log("loss", stats["loss"], prog_bar=True, logger=False)
        return loss

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the gradients directly unless a gradient scaler is at work.

        Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales
        gradients itself (``AdamW(fused=True)``, "does not allow for gradient clipping"), even
        under bf16-mixed, which has no scaler: there the gradients are the true ones and
        clipping them is sound. With fp16's scaler (``16-mixed``) the optimizer is not fused
        (:meth:`configure_optimizers`) and Lightning unscales before clipping, as usual."""
        if not gradient_clip_val:
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        grads = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if str(gradient_clip_algorithm or "norm") == "value":
            torch.nn.utils.clip_grad_value_(grads, gradient_clip_val, foreach=True)
        else:  # one foreach norm, no host read (error_if_nonfinite=False)
            torch.nn.utils.clip_grad_norm_(grads, gradient_clip_val, foreach=True)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if getattr(self, "_drop_grads", False):
            self._drop_grads = False
            optimizer.zero_grad(set_to_none=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # A fixed generator per batch: the validation loss is comparable across evaluations;
        # and validation leaves the training's RNG streams (torch and Python's) as it found them.
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(1234 + batch_idx)
            random.seed(1234 + batch_idx)
            out = self.objective(self.model, batch)
        random.setstate(py_state)
        # Every rank validates its own shard of the held-out rows (train/data.py) rather than
        # rank zero alone: the forward goes through the DDP wrapper, which all ranks must enter
        # alike, and the work is split. sync_dist makes the logged value the mean over all the
        # shards, one reduction per validation run (a no-op on one process).
        bs = batch.code_ids.shape[0]
        self.log_dict(
            {f"val/{k}": v for k, v in out.items()}, prog_bar=False, batch_size=bs, sync_dist=True
        )
        self.log("val_loss", out["loss"], prog_bar=True, batch_size=bs, sync_dist=True)
        if self.diagnostics:
            gen = torch.Generator(device=self.device).manual_seed(4321 + batch_idx)
            diag = self.diagnostics(self.model, self.objective, batch, gen)
            if diag:
                self.log_dict(
                    {f"val/{k}": v for k, v in diag.items()}, batch_size=bs, sync_dist=True
                )

    def configure_optimizers(self):
        # Fused AdamW (one kernel per step) on GPUs, except with fp16's gradient scaler: a fused
        # optimizer unscales inside its step, after Lightning would have to clip.
        scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None)
        fused = (self.device.type == "cuda" or torch.cuda.is_available()) and scaler is None
        opt = torch.optim.AdamW(
            self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=fused or None
        )

        def lr_lambda(step: int) -> float:
            # Linear warm-up, then cosine decay to 10% of the peak over the run.
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            progress = min(
                1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
            )
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
