"""Reliability of training: exact resume after SIGKILL, atomic checkpoints, unreadable
checkpoints, and NaN/inf losses (stop with the step named, or skip and stay finite)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from codefusion.diffusion import CodeFusionObjective
from train.__main__ import main as train_main
from train.resume import (
    AtomicCheckpointIO,
    CheckpointLoadError,
    ResumableSampler,
    capture_rng_state,
    restore_rng_state,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_log_handlers():
    """train_main adds a stderr handler per call; drop them so that a later test's captured
    stderr does not receive "Logging error" tracebacks from a closed stream."""
    import logging

    loggers = [logging.getLogger(n) for n in ("codefusion", "train")]
    before = [list(lg.handlers) for lg in loggers]
    yield
    for lg, handlers in zip(loggers, before, strict=True):
        lg.handlers[:] = handlers


def write_config(tmp_path: Path, data: Path, name: str, **finetune) -> Path:
    stage = dict(
        max_steps=12,
        batch_size=8,
        val_every=4,
        ckpt_every=2,
        warmup_steps=3,
        ema_decay=0.9,
        log_every=1,
    )
    stage.update(finetune)
    body = ", ".join(f"{k}: {json.dumps(v)}" for k, v in stage.items())
    p = tmp_path / f"{name}.yaml"
    p.write_text(
        f"""
name: {name}
language: cf
out_dir: {tmp_path / "runs"}
data_dir: {data}
model: {{preset: tiny, code_len: 16}}
tokenizer: {{path: {tmp_path / "tok"}, vocab_size: 300, languages: [cf]}}
pretrain: null
finetune: {{{body}}}
"""
    )
    return p


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # One thread: the same arithmetic in every run, and gentle on a shared machine.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def _train_cmd(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "train", "--config", str(cfg), "--no-progress"]


def _tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint structure, by path."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


def test_sigkill_and_resume_ends_with_identical_weights(fixture_data, tmp_path):
    from safetensors.torch import load_file

    from train.config import load_run_config
    from train.run import ensure_tokenizer

    env = _env()
    full = write_config(tmp_path, fixture_data, "full")
    cut = write_config(tmp_path, fixture_data, "cut")
    ensure_tokenizer(load_run_config(full))  # shared by both runs, built before they start
    # The uninterrupted run and the run to kill go side by side (one thread each).
    baseline = subprocess.Popen(
        _train_cmd(full), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpt_dir = tmp_path / "runs" / "cut" / "finetune" / "checkpoints"
    proc = subprocess.Popen(
        _train_cmd(cut), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    try:
        while not (ckpt_dir / "last.ckpt").exists():
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        _, base_err = baseline.communicate(timeout=300)
    finally:
        for p in (proc, baseline):
            p.kill()
            p.wait()
    assert proc.returncode == -signal.SIGKILL
    assert baseline.returncode == 0, base_err.decode()[-3000:]
    killed_at = torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < killed_at < 12, killed_at  # killed mid-run, with steps left to train
    assert not (tmp_path / "runs" / "cut" / "model").exists()

    resumed = subprocess.run(
        _train_cmd(cut), cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming finetune" in resumed.stderr

    a = load_file(tmp_path / "runs" / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "runs" / "cut" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    # The final checkpoints agree too: raw and EMA weights, optimizer moments and steps.
    ca, cb = (
        torch.load(tmp_path / "runs" / n / "finetune/checkpoints/last.ckpt", weights_only=True)
        for n in ("full", "cut")
    )
    assert ca["global_step"] == cb["global_step"] == 12
    keys = ("state_dict", "current_model_state", "averaging_state", "optimizer_states")
    ta, tb = _tensors({k: ca[k] for k in keys}), _tensors({k: cb[k] for k in keys})
    assert ta.keys() == tb.keys() and len(ta) > 100
    assert [k for k in ta if not torch.equal(ta[k], tb[k])] == []
    assert ca["lr_schedulers"] == cb["lr_schedulers"]


def test_resumable_sampler_is_a_function_of_seed_and_epoch():
    s = ResumableSampler(20, seed=3)
    first = list(s)
    assert sorted(first) == list(range(20)) and list(s) == first and len(s) == 20
    s.set_epoch(1)
    assert list(s) != first
    resumed = ResumableSampler(20, seed=3, epoch=1, skip=8)
    assert list(resumed) == list(s)[8:]
    assert list(resumed) == list(s)  # the skip applies to one pass only
    assert list(ResumableSampler(5, seed=0, shuffle=False)) == [0, 1, 2, 3, 4]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    state = capture_rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand())
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "rng": state}, tmp_path / "x.ckpt")
    loaded = AtomicCheckpointIO().load_checkpoint(tmp_path / "x.ckpt")
    restore_rng_state(loaded["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_atomic_checkpoint_io_keeps_the_previous_file_when_a_write_fails(tmp_path, monkeypatch):
    import train.resume as resume

    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    good = {"state_dict": {"w": torch.arange(4.0)}, "global_step": 3}
    io.save_checkpoint(good, path)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the disk, then a failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(resume.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "global_step": 4}, path)
    monkeypatch.undo()
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left
    back = io.load_checkpoint(path)
    assert back["global_step"] == 3 and torch.equal(back["state_dict"]["w"], torch.arange(4.0))


def test_trainer_writes_checkpoints_through_the_atomic_io(fixture_data, tmp_path):
    from train.config import load_run_config
    from train.run import trainer_for

    cfg = load_run_config(write_config(tmp_path, fixture_data, "io"))
    trainer = trainer_for(cfg, cfg.finetune, tmp_path / "stage", progress=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_atomic_checkpoint_io_names_an_unreadable_file(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointLoadError, match="last.ckpt"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_truncated_last_ckpt_is_a_one_line_error_suggesting_fresh(fixture_data, tmp_path, capsys):
    cfg = write_config(tmp_path, fixture_data, "trunc", max_steps=2, ema_decay=None)
    last = tmp_path / "runs" / "trunc" / "finetune" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.randn(2000)}}, last)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a torn write
    assert train_main(["--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert str(last) in lines[0] and "--fresh" in lines[0]
    assert train_main(["--config", str(cfg), "--no-progress", "--fresh"]) == 0


def _poison_call(monkeypatch, at_call: int) -> None:
    """Make the objective's loss NaN on its ``at_call``-th call (1-based, training only here)."""
    orig = CodeFusionObjective.forward
    calls = {"n": 0}

    def poisoned(self, model, batch, with_accuracy=False):
        out = orig(self, model, batch, with_accuracy)
        calls["n"] += 1
        if calls["n"] == at_call:
            out = dict(out, loss=out["loss"] * float("nan"))
        return out

    monkeypatch.setattr(CodeFusionObjective, "forward", poisoned)


def test_nan_loss_stops_the_run_naming_the_step(fixture_data, tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path, fixture_data, "nanstop", max_steps=5, val_every=100)
    _poison_call(monkeypatch, at_call=3)  # the third training batch: step 2 (0-based)
    assert train_main(["--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert lines == ["error: non-finite loss (nan) at step 2; stopping (on_nan=stop)"]
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "nanstop" / "model").exists()


def test_nan_loss_is_skipped_and_weights_stay_finite(fixture_data, tmp_path, monkeypatch, caplog):
    from codefusion.pipeline import CodeFusion

    cfg = write_config(tmp_path, fixture_data, "nanskip", max_steps=5, val_every=100, on_nan="skip")
    _poison_call(monkeypatch, at_call=3)
    with caplog.at_level("WARNING", logger="train.module"):
        assert train_main(["--config", str(cfg), "--no-progress"]) == 0
    assert "non-finite loss at step 2: step skipped (1 so far)" in caplog.text
    model = CodeFusion.from_pretrained(tmp_path / "runs" / "nanskip" / "model").model
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())
    last = tmp_path / "runs" / "nanskip" / "finetune" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    weights = _tensors({k: ckpt[k] for k in ("current_model_state", "optimizer_states")})
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
