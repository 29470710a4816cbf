"""The training progress bar: one bar per stage, optimizer steps out of the stage's ``max_steps``.

Lightning's own bar counts the batches of an epoch, and with ``max_steps`` (and no epoch limit)
its description reads like ``Epoch 28/-2``: CF's epochs are a few steps long, so the bar
restarts every few steps and never says how far the stage is. This one counts
``trainer.global_step`` against ``max_steps``, starts at the step a resumed run starts from, and
is refreshed (the logged loss read from the device) every ``refresh_rate`` steps, the module's
``log_every``: the steps at which the module reads its loss anyway.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import _update_n


class StepProgressBar(TQDMProgressBar):
    def __init__(self, stage: str, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.stage = stage

    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # once per fit: the bar spans the whole stage
            bar.reset(total=trainer.max_steps)
            _update_n(bar, trainer.global_step)
        bar.set_description(f"{self.stage} (epoch {trainer.current_epoch})")

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = trainer.global_step
        if self._should_update(n, trainer.max_steps):
            _update_n(self.train_progress_bar, n)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        pass  # an epoch is no boundary of this bar (and its metrics are read at log steps only)
