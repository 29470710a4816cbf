"""`python -m train` with a probe, for tests/test_ddp.py (not a test module itself).

Each rank appends JSON lines to ``$CODEFUSION_PROBE/rank<r>.jsonl``: every pass of its training
sampler (stage, epoch, skip, the indices it yields) and a digest of the weights each stage
starts from (before DDP's own broadcast from rank zero could hide a difference) and ends with.
``CODEFUSION_PROBE_NAN=<rank>:<n>`` makes that rank's ``n``-th training loss NaN. Lightning's
DDP launcher starts the other ranks by running this script again, so they carry the probe too.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from codefusion.diffusion import CodeFusionObjective
from train.data import CodeFusionDataModule
from train.module import TrainingModule
from train.resume import ResumableSampler


def weights_digest(state_dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write(rank: int, record: dict) -> None:
    path = Path(os.environ["CODEFUSION_PROBE"]) / f"rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _install() -> None:
    orig_iter, orig_loader = ResumableSampler.__iter__, CodeFusionDataModule._loader
    orig_setup, orig_end = TrainingModule.setup, TrainingModule.on_fit_end
    orig_objective = CodeFusionObjective.forward
    nan_rank, nan_call = map(int, os.environ.get("CODEFUSION_PROBE_NAN", "-1:0").split(":"))
    calls = {"n": 0}

    def __iter__(self):
        epoch, skip = self.epoch, self.skip
        indices = list(orig_iter(self))
        record = dict(stage=getattr(self, "probe_stage", None), epoch=epoch, skip=skip)
        _write(self.rank, dict(record, event="pass", world=self.world_size, indices=indices))
        return iter(indices)

    def _loader(self, ds, shuffle):
        loader = orig_loader(self, ds, shuffle)
        if shuffle:
            loader.sampler.probe_stage = self.stage
        return loader

    def setup(self, stage):
        digest = weights_digest(self.model.state_dict())
        where = Path(self.trainer.default_root_dir).name
        _write(self.global_rank, dict(event="setup", stage=where, weights=digest))
        orig_setup(self, stage)

    def on_fit_end(self):
        orig_end(self)
        where = Path(self.trainer.default_root_dir).name
        digest = weights_digest(self.model.state_dict())
        _write(self.global_rank, dict(event="end", stage=where, weights=digest))

    def objective(self, model, batch, with_accuracy=False):
        out = orig_objective(self, model, batch, with_accuracy)
        if (
            model.training
            and torch.distributed.is_initialized()
            and (torch.distributed.get_rank() == nan_rank)
        ):
            calls["n"] += 1
            if calls["n"] == nan_call:
                out = dict(out, loss=out["loss"] * float("nan"))
        return out

    ResumableSampler.__iter__ = __iter__
    CodeFusionDataModule._loader = _loader
    TrainingModule.setup = setup
    TrainingModule.on_fit_end = on_fit_end
    CodeFusionObjective.forward = objective


if __name__ == "__main__":
    _install()
    from train.__main__ import main

    sys.exit(main())
