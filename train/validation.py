"""Generation on the held-out share at each validation: the number a model is judged by.

The objective's loss says little about generation (a model can fit its loss and still emit
invalid code), so fine-tuning validation also generates top-k for the held-out examples and
logs top-1/3/5 (the benchmark's own scoring), valid top-1, unique@k and length accuracy as
``val/top5`` etc. These are the training curves of the README, for CodeFusion and the
autoregressive baseline alike, and what fine-tuning steps are selected by.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
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

    With ``best_dir`` it also keeps the model of the best validation so far (highest
    ``val/top5``, the earliest on ties) there, with ``selection.json`` naming its step: the
    stage can export it instead of the last step (``export: best``). The record survives a
    resume: the directory is the state.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        lang: str,
        tokenizer: Any,
        generator: type,
        k: int = 5,
        seed: int = 0,
        best_dir: Path | None = None,
        **options: Any,
    ) -> None:
        self.examples, self.lang, self.tokenizer = list(examples), lang, tokenizer
        self.generator = generator
        self.k, self.seed, self.options = k, seed, options
        self.best_dir = Path(best_dir) if best_dir is not None else None

    def best(self) -> dict[str, Any] | None:
        """``{"step": ..., "val/top5": ...}`` of the kept model, or None."""
        f = self.best_dir / "selection.json" if self.best_dir else None
        return json.loads(f.read_text()) if f is not None and f.is_file() else None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.examples:
            return
        from codefusion.scoring.evaluate import generation_diagnostics

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
        if self.best_dir is not None and trainer.is_global_zero:
            prev = self.best()
            if prev is None or metrics["top5"] > prev["val/top5"]:
                self.generator(pl_module.model, self.tokenizer).save_pretrained(self.best_dir)
                sel = {"step": trainer.global_step, "val/top5": float(metrics["top5"])}
                (self.best_dir / "selection.json").write_text(json.dumps(sel) + "\n")
        pl_module.model.train(was_training)
        pl_module.log_dict({f"val/{k}": float(v) for k, v in metrics.items()}, rank_zero_only=True)
