"""Training the autoregressive baseline with CodeFusion's machinery.

The data are CodeFusion's own (train/data.py), read as seq2seq rows: input = the row's prompt,
target = its code. In pre-training that is T5-style denoising with the tokenizer's mask token as
the sentinel (input: the snippet with masked spans; target: the whole snippet), and the
unconditional rows become language-model rows (input: the empty prompt, i.e. just ``</s>``;
target: the snippet); in fine-tuning, (prompt, code) pairs. The Collator's ``Batch`` is reused:
``code_ids`` (tokens, ``</s>``, pad...) become the labels, with everything after the first end
token set to -100.

:class:`BaselineModule` subclasses :class:`train.module.CodeFusionModule` and keeps its training
and validation steps (NaN/inf handling and logging included), AdamW and the warm-up + cosine
schedule; only the objective differs: token cross-entropy of the T5 decoder.
"""

from __future__ import annotations

import lightning as L
import torch

from codefusion.diffusion import Batch
from codefusion.tokenizer import up_to_first_stop
from train.module import CodeFusionModule


def labels_from_canvas(code_ids: torch.Tensor, pad_id: int, eos_id: int) -> torch.Tensor:
    """Canvas ids [B, C] -> T5 labels: pad and every position after the first ``</s>`` -> -100."""
    after_eos = ~up_to_first_stop(code_ids, (eos_id,))
    return code_ids.masked_fill(after_eos | (code_ids == pad_id), -100)


class Seq2SeqObjective:
    """Mean token cross-entropy of ``model`` (a T5ForConditionalGeneration) on a ``Batch``;
    returns ``{"loss", "token_acc"}`` like ``CodeFusionObjective`` returns its terms."""

    def __init__(self, pad_id: int, eos_id: int) -> None:
        self.pad_id, self.eos_id = pad_id, eos_id

    def __call__(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        labels = labels_from_canvas(batch.code_ids, self.pad_id, self.eos_id)
        out = model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, labels=labels)
        with torch.no_grad():
            keep = labels != -100
            hits = (out.logits.argmax(-1) == labels) & keep
            acc = hits.sum().float() / keep.sum().clamp(min=1)
        return {"loss": out.loss, "token_acc": acc}


class BaselineModule(CodeFusionModule):
    """``CodeFusionModule`` with the seq2seq objective: same steps, optimizer and schedule."""

    def __init__(
        self,
        model,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        max_steps: int = 1000,
        on_nan: str = "stop",
        log_every: int = 1,
        ckpt_every: int | None = None,
    ) -> None:
        # CodeFusionModule.__init__ builds the diffusion schedule from a CodeFusionConfig, which a
        # T5 config does not have: set up the same attributes directly.
        L.LightningModule.__init__(self)
        self.model = model
        cfg = model.config
        self.objective = Seq2SeqObjective(cfg.pad_token_id, cfg.eos_token_id)
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.max_steps, self.on_nan = warmup_steps, max_steps, on_nan
        self.log_every, self.ckpt_every = max(1, log_every), ckpt_every
        self.skipped_nonfinite = 0
        self.embedding_lr_mult, self.diagnostics = 1.0, False
