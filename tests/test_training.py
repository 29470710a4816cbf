"""Training: the loss falls on a synthetic task; the two-stage run exports a usable model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from codefusion.config import preset
from codefusion.diffusion import Batch, CodeFusionObjective
from codefusion.pipeline import CodeFusion, build_model
from train.__main__ import main as train_main
from train.config import RunConfigError, load_run_config


def test_tiny_model_loss_falls_on_a_synthetic_task(tiny_tokenizer):
    """Copy task: the prompt names a CF rule, the code is that rule. 300 plain AdamW steps."""
    from bench.fixtures import CF_CODES, CF_PROMPTS

    torch.manual_seed(0)
    model = build_model(preset("tiny", code_len=16), tiny_tokenizer)
    cf = CodeFusion(model, tiny_tokenizer)
    obj = CodeFusionObjective(cf.schedule)
    ids, mask, _ = tiny_tokenizer.encode_prompts(CF_PROMPTS, 24)
    code, _ = tiny_tokenizer.encode_code(CF_CODES, 16)
    batch = Batch(ids, mask, code, torch.zeros(len(CF_CODES), dtype=torch.bool))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(300):
        loss = obj(model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.4 * first, (first, last)
    acc = obj(model.eval(), batch, with_accuracy=True)["token_acc"]
    assert acc > 0.9


def test_run_config_overrides_and_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nlanguage: cf\nmodel: {preset: tiny}\nfinetune: {max_steps: 5}\n")
    cfg = load_run_config(p, ["finetune.batch_size=3", "pretrain=null"])
    assert cfg.finetune.batch_size == 3 and cfg.finetune.max_steps == 5 and cfg.pretrain is None
    with pytest.raises(RunConfigError, match="unknown keys"):
        load_run_config(p, ["finetune.bogus=1"])
    with pytest.raises(RunConfigError, match="not found"):
        load_run_config(tmp_path / "missing.yaml")
    with pytest.raises(RunConfigError, match="on_nan"):
        load_run_config(p, ["finetune.on_nan=maybe"])


def test_two_stage_run_exports_a_model(fixture_data, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"""
name: e2e
language: cf
out_dir: {tmp_path / "runs"}
data_dir: {fixture_data}
model: {{preset: tiny, code_len: 16}}
tokenizer: {{path: {tmp_path / "tok"}, vocab_size: 300, languages: [cf]}}
pretrain: {{max_steps: 6, batch_size: 8, val_every: 3, ckpt_every: 3, warmup_steps: 2}}
finetune: {{max_steps: 6, batch_size: 8, val_every: 3, ckpt_every: 3, warmup_steps: 2, val_fraction: 0.1}}
"""
    )
    assert train_main(["--config", str(cfg)]) == 0
    # One progress bar per stage, counting its steps across epochs (4 steps an epoch here).
    bars = capsys.readouterr().out  # Lightning's tqdm bars write to stdout
    assert "pretrain (epoch 1)" in bars and "finetune (epoch 1)" in bars and "6/6" in bars
    assert "/-" not in bars and "Epoch " not in bars
    run = tmp_path / "runs" / "e2e"
    assert (run / "pretrain" / "model" / "model.safetensors").is_file()
    assert (run / "finetune" / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "finetune" / "logs").rglob("metrics.csv"))
    cf = CodeFusion.from_pretrained(run / "model")
    assert len(cf.generate("cells greater than 5", k=2, steps=4)) >= 1
    # Fine-tuning started from the pre-trained weights, not from scratch.
    pre = CodeFusion.from_pretrained(run / "pretrain" / "model").model.state_dict()
    fin = cf.model.state_dict()
    assert any(not torch.equal(pre[k], fin[k]) for k in pre)


def test_train_cli_reports_bad_config(tmp_path, capsys):
    assert train_main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file" in capsys.readouterr().err


class _Vocab:
    """The little of a tokenizer that building a model reads."""

    pad_id, eos_id, mask_id = 0, 1, 2

    def __len__(self) -> int:
        return 1000


def test_every_shipped_config_loads():
    from pathlib import Path

    from codefusion.auto import ARCHITECTURES
    from codefusion.config import PRESETS
    from train.run import build_generator

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 5
    from eval.ablation import load_plan, resolve_rows

    for plan in sorted((Path(__file__).parents[1] / "configs" / "ablation").glob("*.yaml")):
        rows = resolve_rows(load_plan(plan))  # every row's overrides load as a run config
        for row in rows:
            load_run_config(Path(__file__).parents[1] / load_plan(plan)["base"], row["set"])
    for path in configs:  # (ablation plans live in configs/ablation/ and are not run configs)
        cfg = load_run_config(path)
        assert cfg.model["preset"] in PRESETS, path
        for arch in ARCHITECTURES:  # every config trains every architecture (--baseline, ...)
            cfg = load_run_config(path, twin=arch)
            with torch.device("meta"):  # sizes only
                build_generator(cfg, _Vocab())
    # The twin leaves CodeFusion's own options out (cf-tiny has the copy head); naming the
    # architecture by hand beside one of them is a one-line error, not a silent drop.
    tiny = Path(__file__).parents[1] / "configs" / "cf-tiny.yaml"
    assert load_run_config(tiny).model["copy"] is True
    assert "copy" not in load_run_config(tiny, twin="t5-baseline").model
    with pytest.raises(RunConfigError, match="unknown baseline config keys: copy"):
        load_run_config(tiny, ["model.architecture=t5-baseline"])


def test_prompt_dropout_drops_a_seeded_share_of_prompts():
    from train.data import PairDataset

    pairs = [(f"prompt {i}", f"code {i}") for i in range(400)]
    ds = PairDataset(pairs, prompt_dropout=0.25, seed=3)
    rows = [ds[(0, i)] for i in range(400)]
    dropped = [r for r in rows if r.uncond]
    assert 60 < len(dropped) < 140 and all(r.prompt == "" for r in dropped)
    assert [r.uncond for r in rows] == [ds[(0, i)].uncond for i in range(400)]  # seeded
    assert [r.uncond for r in rows] != [ds[(1, i)].uncond for i in range(400)]  # per epoch
    assert not any(PairDataset(pairs)[i].uncond for i in range(400))


def test_export_best_keeps_the_best_held_out_validation(fixture_data, tmp_path):
    """``export: best`` exports the model of the validation with the highest held-out top-5
    (fine-tuning steps selected by generation), and says which step it was."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"""
name: best
language: cf
out_dir: {tmp_path / "runs"}
data_dir: {fixture_data}
model: {{preset: tiny, code_len: 16}}
tokenizer: {{path: {tmp_path / "tok"}, vocab_size: 300, languages: [cf]}}
pretrain: null
finetune: {{max_steps: 6, batch_size: 8, val_every: 2, ckpt_every: 2, warmup_steps: 2,
  val_fraction: 0.2, val_generate: 3, val_generate_steps: 2, val_generate_draws: 2,
  export: best}}
"""
    )
    assert train_main(["--config", str(cfg)]) == 0
    stage = tmp_path / "runs" / "best" / "finetune"
    sel = json.loads((stage / "model" / "selection.json").read_text())
    logged = [
        float(r["val/top5"])
        for f in (stage / "logs").rglob("metrics.csv")
        for r in csv.DictReader(f.open())
        if r.get("val/top5")
    ]
    assert len(logged) == 3 and sel["val/top5"] == max(logged)
    assert sel["step"] in (2, 4, 6)
    best = CodeFusion.from_pretrained(stage / "best").model.state_dict()
    exported = CodeFusion.from_pretrained(stage / "model").model.state_dict()
    assert all(torch.equal(best[k], exported[k]) for k in best)
    with pytest.raises(RunConfigError, match="val_generate"):
        load_run_config(cfg, ["finetune.val_generate=0"])


@pytest.mark.parametrize("lang", ["cf", "bash", "python"])
def test_paper_configs_carry_the_ablation_recipe(lang):
    """A GPU run of a paper config trains with the README ablation's recipe, not the
    paper's literal objective, and exports the best held-out validation."""
    cfg = load_run_config(Path(__file__).parents[1] / "configs" / f"{lang}-paper.yaml")
    for st in (cfg.pretrain, cfg.finetune):
        assert (st.decoder_input, st.noise_weighting) == ("clean", "x0")
        assert st.ema_decay is not None  # with the warm-up of train/ema.py (tests/test_ema.py)
    assert cfg.finetune.val_generate > 0 and cfg.finetune.export == "best"
    mc = preset("paper", **{k: v for k, v in cfg.model.items() if k != "preset"})
    assert mc.self_condition
    assert mc.embedding_init_std is None  # 1/sqrt(Dz): L learns
