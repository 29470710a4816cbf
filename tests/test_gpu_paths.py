"""GPU-path failures reproduced on CPU (issue #19): bf16-mixed with fused AdamW and clipping,
``compile: true`` through export and reload, host reads (device syncs on a GPU) inside the
training step and the EMA update, and data loading in persistent workers."""

from __future__ import annotations

import collections
import traceback

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.fixtures import CF_CODES, CF_PROMPTS
from codefusion.batch import Batch
from codefusion.config import preset
from codefusion.pipeline import CodeFusion, build_model
from train.__main__ import main as train_main
from train.module import TrainingModule
from train.objectives import build_objective

# Ops that copy a device value to the host: each one waits for the GPU's queue to drain.
HOST_READS = {"aten._local_scalar_dense.default", "aten.nonzero.default"}


class HostReads(TorchDispatchMode):
    """Records every host read of a tensor with the Python frames that asked for it."""

    def __init__(self, step=lambda: None):
        super().__init__()
        self.step, self.reads = step, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in HOST_READS:
            frames = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[:-1]]
            self.reads.append((self.step(), frames))
        return func(*args, **(kwargs or {}))


class Ops(HostReads):
    """HostReads that also counts every dispatched op."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return super().__torch_dispatch__(func, types, args, kwargs)


def _batch(tok, n=8) -> Batch:
    ids, mask, _ = tok.encode_prompts((CF_PROMPTS * 2)[:n], 24)
    code, _ = tok.encode_code((CF_CODES * 2)[:n], 16)
    return Batch(ids, mask, code, torch.zeros(n, dtype=torch.bool))


def _loader(tok, steps):
    batches = [_batch(tok)] * steps
    return torch.utils.data.DataLoader(batches, batch_size=1, collate_fn=lambda rows: rows[0])


def _trainer(steps, **kw) -> L.Trainer:
    opts = dict(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    opts.update(kw)
    return L.Trainer(**opts)


# --- (1) bf16-mixed + fused AdamW + gradient clipping ------------------------------------------


@pytest.mark.parametrize("arch", ["codefusion", "t5-baseline"])
def test_bf16_mixed_with_fused_adamw_clips_and_trains(tiny_tokenizer, monkeypatch, arch):
    """On a GPU the module picks AdamW(fused=True); with bf16-mixed and gradient_clip_val,
    Lightning's mixed-precision plugin refused to clip for it ("does not allow for gradient
    clipping ... fused") at the first optimizer step. CUDA's presence is simulated for the
    optimizer's choice only (fused AdamW runs on CPU since torch 2.4)."""
    from codefusion.baseline import baseline_config, build_baseline

    torch.manual_seed(0)
    if arch == "codefusion":
        model = build_model(preset("tiny", code_len=16), tiny_tokenizer)
    else:
        model = build_baseline(baseline_config("tiny", code_len=16), tiny_tokenizer)
    module = TrainingModule(model, build_objective(arch, model), warmup_steps=1)
    real = type(module).configure_optimizers

    def on_a_gpu_machine(self):
        with monkeypatch.context() as m:
            m.setattr(torch.cuda, "is_available", lambda: True)
            return real(self)

    monkeypatch.setattr(type(module), "configure_optimizers", on_a_gpu_machine)
    clip, norms = 1e-3, []

    class Norms(L.Callback):
        def on_train_start(self, trainer, pl_module):
            def record(opt, args, kwargs):  # the gradients the step used (clipped)
                grads = [
                    p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None
                ]
                norms.append(
                    float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
                )

            trainer.optimizers[0].register_step_post_hook(record)

    trainer = _trainer(3, precision="bf16-mixed", gradient_clip_val=clip, callbacks=[Norms()])
    trainer.fit(module, _loader(tiny_tokenizer, 3))
    assert trainer.optimizers[0].defaults["fused"] is True
    assert len(norms) == 3 and max(norms) <= clip * 1.01, norms
    assert all(torch.isfinite(p).all() for p in module.parameters())


# --- (2) compile: true -> export -> reload ------------------------------------------------------


def test_compile_model_compiles_what_training_calls_and_keeps_weight_names(tiny_tokenizer):
    from codefusion.diffusion import CodeFusionObjective
    from train.run import compile_model

    torch._dynamo.reset()
    torch.manual_seed(0)
    # More layers than the tiny preset, so that sharing compiled code between layers shows.
    cfg = preset("tiny", code_len=16, encoder_layers=3, denoiser_layers=4, decoder_layers=2)
    model = build_model(cfg, tiny_tokenizer)
    names = list(model.state_dict())
    parts = compile_model(model, backend="eager")
    blocks = [*model.encoder.encoder.block, *model.denoiser.blocks, *model.decoder.blocks]
    assert parts == blocks  # every transformer block of E, N and D (regional compilation)
    assert list(model.state_dict()) == names  # no _orig_mod. prefix: exports load strictly
    from torch._dynamo.utils import counters

    counters.clear()
    obj = CodeFusionObjective(CodeFusion(model, tiny_tokenizer).schedule)
    obj(model.train(), _batch(tiny_tokenizer))["loss"].backward()
    counts = dict(counters["stats"])
    # Each kind of block traced (E's T5 blocks, N's conditioned ones, D's plain ones), not
    # each layer: the layers of a stack share their compiled code (9 blocks, about 5 graphs).
    assert 3 <= counts["unique_graphs"] <= 6, counts


def test_compiled_two_stage_run_exports_and_reloads(fixture_data, tmp_path):
    """compile: true used to wrap the model (compiling nothing the objective calls) and prefix
    every weight name with _orig_mod., so fine-tuning refused the pre-training export. The
    eager backend keeps the test fast: it traces with dynamo like inductor does, without code
    generation."""
    cfg = tmp_path / "run.yaml"
    stage = "{max_steps: 4, batch_size: 8, val_every: 100, ckpt_every: 2, warmup_steps: 1, ema_decay: 0.9}"
    cfg.write_text(
        f"""
name: compiled
language: cf
out_dir: {tmp_path / "runs"}
data_dir: {fixture_data}
model: {{preset: tiny, code_len: 16}}
tokenizer: {{path: {tmp_path / "tok"}, vocab_size: 300, languages: [cf]}}
precision: bf16-mixed
compile: true
compile_backend: eager
pretrain: {stage}
finetune: {stage}
"""
    )
    torch._dynamo.reset()
    assert train_main(["--config", str(cfg), "--no-progress"]) == 0
    run = tmp_path / "runs" / "compiled"
    pre = CodeFusion.from_pretrained(run / "pretrain" / "model")  # strict load
    final = CodeFusion.from_pretrained(run / "model")
    assert not any(k.startswith("_orig_mod") for k in final.model.state_dict())
    assert any(
        not torch.equal(v, final.model.state_dict()[k]) for k, v in pre.model.state_dict().items()
    )
    assert len(final.generate("cells greater than 5", k=2, steps=4)) >= 1


# --- (4) no host reads between log steps; (3) the EMA update reads nothing -----------------------


def _reads_at(reads, skip=("/torch/optim/", "/transformers/", "fetchers.py", "combined_loader")):
    """Steps at which something read a device value, ignoring reads made inside: CPU AdamW's
    step counters
    (fused AdamW on a GPU keeps them on the device), T5's own mask check (transformers reads
    ``mask.all()`` once per eager encoder forward; a compiled E does not) and Lightning's
    fetching of CPU batches."""

    def origin(frames):  # the innermost frame outside torch's own wrappers (dynamo, _tensor)
        return next(f for f in reversed(frames) if "/torch/_" not in f)

    return [step for step, frames in reads if not any(s in origin(frames) for s in skip)]


def test_training_steps_read_nothing_between_log_steps(fixture_data, tmp_path):
    """Before: every step read the loss for the NaN check (`isfinite` between forward and
    backward), logged (and the progress bar read) it, and the EMA update read its count twice.
    Now a step reads only at log steps (the last step is one), where the NaN check runs too,
    and the EMA reads its count once per fit."""
    from train.config import load_run_config
    from train.run import run

    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        f"""
name: reads
language: cf
out_dir: {tmp_path / "runs"}
data_dir: {fixture_data}
model: {{preset: tiny, code_len: 16}}
tokenizer: {{path: {tmp_path / "tok"}, vocab_size: 300, languages: [cf]}}
pretrain: null
finetune: {{max_steps: 8, batch_size: 8, val_every: 1000, ckpt_every: 1000, warmup_steps: 2,
           log_every: 4, ema_decay: 0.9, val_fraction: 0.0}}
"""
    )
    cfg = load_run_config(cfg_path)
    step = [None]

    class StepStart(L.Callback):  # first of the callbacks
        def on_train_batch_start(self, trainer, *args):
            step[0] = trainer.global_step

    class StepEnd(L.Callback):  # after every other callback's end of the batch (EMA's, the bar's)
        def on_train_batch_end(self, trainer, *args):
            step[0] = None  # Lightning's log writes, epoch ends, the end of fit

    import train.run as run_mod

    real = run_mod.trainer_for
    mode = HostReads(lambda: step[0])

    def trainer_for(*a, **kw):
        trainer = real(*a, **kw)
        trainer.callbacks.insert(0, StepStart())
        trainer.callbacks.append(StepEnd())
        return trainer

    run_mod.trainer_for = trainer_for
    try:
        with mode:
            run(cfg, progress=True)  # the progress bar too: refreshed every log_every steps
    finally:
        run_mod.trainer_for = real
    reads = collections.Counter(_reads_at(mode.reads))
    assert set(reads) <= {None, 0, 3, 7}, reads  # 0: the EMA's one read of its count
    assert reads[0] <= 1 and reads[3] >= 1 and reads[7] >= 1


def test_ema_update_is_one_lerp_and_reads_nothing():
    from torch.optim.swa_utils import AveragedModel

    from train.ema import _ForeachEMA, _HostCountedAverage

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    ref = AveragedModel(net, multi_avg_fn=_ForeachEMA(0.9), use_buffers=True)
    ours = AveragedModel(net, multi_avg_fn=_ForeachEMA(0.9), use_buffers=True)
    ours.__class__ = _HostCountedAverage  # what EMA.setup does
    ours.load_state_dict(ref.state_dict())
    for i in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ref.multi_avg_fn.step = ours.multi_avg_fn.step = i
        ref.update_parameters(net)
        with Ops() as mode:
            ours.update_parameters(net)
        assert len(mode.reads) == (1 if i == 0 else 0)  # the count, once, at the first update
        if i > 0:
            assert mode.ops["aten._foreach_lerp_.Scalar"] == 1
        for a, b in zip(ref.state_dict().values(), ours.state_dict().values(), strict=True):
            assert torch.equal(a, b)


# --- data loading in persistent workers ---------------------------------------------------------


def test_persistent_workers_load_the_same_batches(fixture_data, tiny_tokenizer):
    """Pre-training rows depend on the epoch (unconditional or masked, seeded per epoch and
    index); persistent workers keep dataset copies from before the first epoch, so the epoch
    travels with each index. Two epochs, with and without workers: the same batches."""
    from train.data import CodeFusionDataModule

    def batches(workers):
        dm = CodeFusionDataModule(
            "pretrain", "cf", tiny_tokenizer, 24, 16, 3, data_dir=str(fixture_data),
            val_fraction=0.0, num_workers=workers, mask_rate=0.5,
        )  # fmt: skip
        dm.setup()
        loader = dm.train_dataloader()
        out = []
        for epoch in (0, 1):
            dm.set_epoch(epoch)  # what the module's on_train_epoch_start does
            loader.sampler.set_epoch(epoch)  # what Lightning does
            out.append([(b.prompt_ids, b.code_ids, b.uncond) for b in loader])
        return out

    plain, workers = batches(0), batches(2)
    for a, b in zip(plain, workers, strict=True):
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))
    assert any(
        not torch.equal(x[0], y[0]) for x, y in zip(plain[0], plain[1], strict=False)
    )  # the epoch matters
