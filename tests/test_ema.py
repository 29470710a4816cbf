"""EMA with a warm-up: the export follows the training, not the random initialisation."""

from __future__ import annotations

import torch

from train.ema import EMA, _ForeachEMA, warmup_decay


def test_warmup_decay_starts_low_and_reaches_the_decay():
    assert warmup_decay(0.9999, 0) == 0.1
    assert warmup_decay(0.9999, 90) == 0.91
    assert warmup_decay(0.999, 10**6) == 0.999


def test_foreach_update_is_a_lerp_of_floating_tensors_only():
    avg = [torch.zeros(3), torch.zeros(2, dtype=torch.long)]
    cur = [torch.ones(3), torch.ones(2, dtype=torch.long)]
    upd = _ForeachEMA(0.5)
    upd.step = 10**6  # decay 0.5
    upd(avg, cur, None)
    assert torch.allclose(avg[0], torch.full((3,), 0.5)) and avg[1].tolist() == [0, 0]


def test_export_is_not_dominated_by_the_initial_weights(fixture_data, tmp_path):
    """A 60-step fine-tuning with ema_decay 0.9999: without warm-up the export would hold
    0.9999^60 = 99.4% of the first step's weights; with it the export is closer to the last
    raw weights than to the first ones."""
    from train.__main__ import main as train_main

    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"""
name: ema
language: cf
out_dir: {tmp_path / "runs"}
data_dir: {fixture_data}
model: {{preset: tiny, code_len: 16}}
tokenizer: {{path: {tmp_path / "tok"}, vocab_size: 300, languages: [cf]}}
pretrain: null
finetune: {{max_steps: 60, batch_size: 8, lr: 3.0e-3, warmup_steps: 5, ema_decay: 0.9999,
           val_every: 1000, ckpt_every: 60, val_fraction: 0.0}}
"""
    )
    assert train_main(["--config", str(cfg), "--no-progress"]) == 0
    from safetensors.torch import load_file

    export = load_file(str(tmp_path / "runs/ema/model/model.safetensors"))
    ckpt = torch.load(tmp_path / "runs/ema/finetune/checkpoints/last.ckpt", weights_only=True)
    raw = {k.removeprefix("model."): v for k, v in ckpt["current_model_state"].items()}
    torch.manual_seed(0)  # the first-step weights are not saved: compare with a fresh model
    from codefusion.config import preset
    from codefusion.pipeline import build_model
    from codefusion.tokenizer import CodeTokenizer

    init = build_model(preset("tiny", code_len=16), CodeTokenizer.from_pretrained(tmp_path / "tok"))
    init = init.state_dict()
    moved = [k for k in export if not torch.equal(raw[k], init[k])]
    assert moved
    to_raw = sum(float((export[k] - raw[k]).norm()) for k in moved)
    to_init = sum(float((export[k] - init[k]).norm()) for k in moved)
    assert to_raw < 0.5 * to_init, (to_raw, to_init)


def test_callback_takes_the_step_from_lightning():
    cb = EMA(0.999)
    assert cb.should_update(step_idx=41) and cb._update.step == 41
    assert not cb.should_update(epoch_idx=3)
