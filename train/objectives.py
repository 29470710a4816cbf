"""The training objective of each architecture, built from a stage's settings.

The Lightning module (train/module.py) is the same for every architecture; it takes one of
these, and the architecture's validation diagnostics (:data:`DIAGNOSTICS`). An objective maps
``(model, Batch)`` to a dict of scalar terms with ``"loss"`` among them. It is an ``nn.Module``
so that its constant tensors (the diffusion schedule) move with the Lightning module; it holds
no parameters.

- ``codefusion``: :class:`codefusion.diffusion.CodeFusionObjective`, the paper's three loss terms
  (options: the stage's ``pad_weight``, ``noise_weighting``, ``decoder_input``,
  ``self_cond_prob``).
- ``t5-baseline``: :class:`Seq2SeqObjective`, token cross-entropy of the T5 decoder. The data are
  CodeFusion's own (train/data.py), read as seq2seq rows: input = the row's prompt, target = its
  code. In pre-training that is T5-style denoising with the tokenizer's mask token as the
  sentinel (input: the snippet with masked spans; target: the whole snippet), and the
  unconditional rows become language-model rows (input: the empty prompt, i.e. just ``</s>``;
  target: the snippet); in fine-tuning, (prompt, code) pairs. The ``Batch``'s ``code_ids``
  (tokens, ``</s>``, pad...) become the labels, with everything after the first end token set
  to -100. The diffusion objective's stage settings do not apply to it.
- ``masked``: :class:`MaskedObjective`, masked diffusion's continuous-time loss
  (codefusion/absorbing.py) on the same rows as CodeFusion's: the prompt clean, the canvas
  (code, end token, pads) masked at a time t drawn per row. Unconditional pre-training rows have
  the empty prompt, as for the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from codefusion.absorbing import mask_canvas, masked_loss, sample_times
from codefusion.batch import Batch
from codefusion.diffusion import CodeFusionObjective
from codefusion.schedule import SqrtSchedule
from codefusion.tokenizer import up_to_first_stop
from train.config import StageConfig


def labels_from_canvas(code_ids: torch.Tensor, pad_id: int, eos_id: int) -> torch.Tensor:
    """Canvas ids [B, C] -> T5 labels: pad and every position after the first ``</s>`` -> -100."""
    after_eos = ~up_to_first_stop(code_ids, (eos_id,))
    return code_ids.masked_fill(after_eos | (code_ids == pad_id), -100)


class Seq2SeqObjective(nn.Module):
    """Mean token cross-entropy of ``model`` (a T5ForConditionalGeneration) on a ``Batch``;
    returns ``{"loss", "token_acc"}`` like ``CodeFusionObjective`` returns its terms."""

    def __init__(self, pad_id: int, eos_id: int) -> None:
        super().__init__()
        self.pad_id, self.eos_id = pad_id, eos_id

    def forward(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        labels = labels_from_canvas(batch.code_ids, self.pad_id, self.eos_id)
        out = model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, labels=labels)
        with torch.no_grad():
            keep = labels != -100
            hits = (out.logits.argmax(-1) == labels) & keep
            acc = hits.sum().float() / keep.sum().clamp(min=1)
        return {"loss": out.loss, "token_acc": acc}


class MaskedObjective(nn.Module):
    """Masked diffusion's loss on a ``Batch``: ``{"loss", "token_acc"}``."""

    def __init__(self, mask_id: int) -> None:
        super().__init__()
        self.mask_id = mask_id

    def forward(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        x = batch.code_ids
        t = sample_times(x.shape[0], None, x.device)
        z, masked = mask_canvas(x, t, self.mask_id)
        logits = model(batch.prompt_ids, batch.prompt_mask, z)
        return masked_loss(logits, x, masked, t, self.mask_id)


# The stage settings the diffusion objective takes, by name.
DIFFUSION_KEYS = ("pad_weight", "noise_weighting", "decoder_input", "self_cond_prob", "min_t")


def diffusion_objective(model, st: StageConfig) -> CodeFusionObjective:
    schedule = SqrtSchedule(model.config.diffusion_steps)
    return CodeFusionObjective(schedule, **st.pick(DIFFUSION_KEYS))


def seq2seq_objective(model, st: StageConfig) -> Seq2SeqObjective:
    return Seq2SeqObjective(model.config.pad_token_id, model.config.eos_token_id)


def masked_objective(model, st: StageConfig) -> MaskedObjective:
    return MaskedObjective(model.config.mask_id)


OBJECTIVES: dict[str, Callable[[Any, StageConfig], nn.Module]] = {
    "codefusion": diffusion_objective,
    "t5-baseline": seq2seq_objective,
    "masked": masked_objective,
}


def _codefusion_diagnostics(model, objective, batch: Batch, generator: torch.Generator):
    from codefusion.diagnostics import model_diagnostics

    return model_diagnostics(model, objective.schedule, batch, generator=generator)


# What validation logs beside the loss terms, per architecture: (model, objective, a held-out
# batch, a seeded generator) -> {name: value} (codefusion/diagnostics.py for CodeFusion).
Diagnostics = Callable[[Any, nn.Module, Batch, torch.Generator], dict[str, float]]
DIAGNOSTICS: dict[str, Diagnostics | None] = {
    "codefusion": _codefusion_diagnostics,
    "t5-baseline": None,
    "masked": None,
}


def build_objective(architecture: str, model, st: StageConfig | None = None) -> nn.Module:
    """The objective of ``architecture`` for ``model`` with a stage's settings (defaults: a
    ``StageConfig()``'s)."""
    return OBJECTIVES[architecture](model, StageConfig() if st is None else st)
