"""Generation on the held-out share at each validation: the number a model is judged by.

The objective's loss says little about generation (a model can fit its loss and still emit
invalid code), so fine-tuning validation also generates top-k for the held-out examples and
logs top-1/3/5 (the benchmark's own scoring), valid top-1, unique@k and length accuracy as
``val/top5`` etc. These are the training curves of the README, for CodeFusion and the
autoregressive baseline alike, and what fine-tuning steps are selected by.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from codefusion.data import Example


class GenerationCheck(L.Callback):
    """Generates for ``examples`` at the end of each validation and logs ``val/<metric>``.

    ``generator`` is the class (CodeFusion or the baseline) that wraps the module's model with
    the tokenizer; ``options`` go to its ``generate`` (``num_draws`` and its own options). Runs
    on rank zero's model only after the EMA swap (list this callback before the EMA callback),
    with a fixed seed: curves are comparable.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        lang: str,
        tokenizer: Any,
        generator: type,
        k: int = 5,
        seed: int = 0,
        **options: Any,
    ) -> None:
        self.examples, self.lang, self.tokenizer = list(examples), lang, tokenizer
        self.generator = generator
        self.k, self.seed, self.options = k, seed, options

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.examples:
            return
        from eval.diagnose import generation_diagnostics

        was_training = pl_module.model.training
        with torch.random.fork_rng(
            devices=[pl_module.device] if pl_module.device.type == "cuda" else []
        ):
            metrics = generation_diagnostics(
                self.generator(pl_module.model, self.tokenizer),
                self.examples,
                self.lang,
                k=self.k,
                seed=self.seed,
                **self.options,
            )
        pl_module.model.train(was_training)
        pl_module.log_dict({f"val/{k}": float(v) for k, v in metrics.items()}, rank_zero_only=True)
