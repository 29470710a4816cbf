"""The autoregressive (T5) baseline: sizes, save/load, both generation modes, bad inputs, and
training with the same machinery as CodeFusion."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from bench.fixtures import CF_CODES, CF_PROMPTS
from codefusion.auto import load_generator
from codefusion.baseline import AR_PRESETS, ARBaseline, baseline_config
from codefusion.cli import main as cli
from codefusion.config import PRESETS, ConfigError
from codefusion.errors import GenerationError, ModelLoadError
from codefusion.pipeline import CodeFusion
from train.__main__ import main as train_main
from train.module import TrainingModule
from train.objectives import Seq2SeqObjective, build_objective, labels_from_canvas


@pytest.fixture()
def ar(tiny_tokenizer):
    """A randomly initialised baseline of the tiny preset's size (fixed seed)."""
    torch.manual_seed(0)
    return ARBaseline.from_preset("tiny", tiny_tokenizer, code_len=12)


def _param_count(name: str, vocab: int) -> int:
    from transformers import T5ForConditionalGeneration

    with torch.device("meta"):  # no memory, no init: just the shapes
        model = T5ForConditionalGeneration(baseline_config(name, vocab_size=vocab))
    return sum(p.numel() for p in model.parameters())


def test_preset_sizes():
    assert 70e6 <= _param_count("paper", 16384) <= 80e6  # CodeFusion paper: 72.9M
    assert 2e6 <= _param_count("small", 1000) <= 3e6  # CodeFusion small: 2.33M
    assert 0.3e6 <= _param_count("tiny", 1000) <= 0.5e6  # CodeFusion tiny: 0.40M
    assert set(AR_PRESETS) == set(PRESETS)  # one baseline size per CodeFusion preset
    with pytest.raises(ConfigError, match="unknown baseline preset"):
        baseline_config("huge")
    with pytest.raises(ConfigError, match="unknown baseline config keys: code_lenn"):
        baseline_config("tiny", code_lenn=3)
    with pytest.raises(ConfigError, match="positive integer"):
        baseline_config("tiny", code_len=0)


def test_ids_come_from_the_tokenizer(ar, tiny_tokenizer):
    c = ar.config
    assert c.vocab_size == len(tiny_tokenizer)
    assert (c.pad_token_id, c.eos_token_id) == (tiny_tokenizer.pad_id, tiny_tokenizer.eos_id)
    assert c.decoder_start_token_id == tiny_tokenizer.pad_id
    assert (c.max_prompt_len, c.code_len) == (48, 12)


def test_save_load_round_trip_is_bit_identical(ar, tmp_path):
    ar.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".ckpt")) for f in files)  # no pickle
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architecture"] == (
        "t5-baseline"
    )
    back = load_generator(tmp_path / "m")
    assert isinstance(back, ARBaseline)
    a, b = ar.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for mode in ("beam", "sample"):
        kw = dict(k=3, seed=4, mode=mode)
        assert ar.generate("top 3 sales", **kw) == back.generate("top 3 sales", **kw)


def test_load_generator_dispatches_and_load_errors_are_clear(ar, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "cf")
    assert isinstance(load_generator(tmp_path / "cf"), CodeFusion)
    d = tmp_path / "ar"
    ar.save_pretrained(d)
    with pytest.raises(ModelLoadError, match="architecture is 't5-baseline', not 'codefusion'"):
        CodeFusion.from_pretrained(d)  # the diffusion loader refuses a baseline, clearly
    cfg = json.loads((d / "config.json").read_text())

    def write(**changes):
        (d / "config.json").write_text(json.dumps({**cfg, **changes}))

    write(vocab_size=cfg["vocab_size"] + 1)
    with pytest.raises(ModelLoadError, match="vocab_size .* does not match the tokenizer"):
        load_generator(d)
    write(d_model=32)
    with pytest.raises(ModelLoadError, match="weights do not load"):
        load_generator(d)
    write(bogus=1)
    with pytest.raises(ModelLoadError, match="unknown baseline config keys: bogus"):
        load_generator(d)
    write(architecture="rnn")
    with pytest.raises(ModelLoadError, match="unknown architecture 'rnn'"):
        load_generator(d)
    write()
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing model.safetensors"):
        load_generator(d)
    with pytest.raises(ModelLoadError, match="does not exist"):
        ARBaseline.from_pretrained(tmp_path / "nowhere")


def test_beam_search_returns_distinct_candidates_by_score(ar):
    out = ar.generate("cells greater than 5", k=4)
    assert 1 <= len(out) <= 4
    assert len({c.code for c in out}) == len(out)
    scores = [c.score for c in out]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    # Beam search ignores the seed; more beams (num_draws) still return at most k.
    assert ar.generate("cells greater than 5", k=4, seed=9) == out
    assert len(ar.generate("cells greater than 5", k=2, num_draws=6)) <= 2
    # The beam score is the mean token log-probability of the returned sequence.
    ids, mask, _ = ar.tokenizer.encode_prompts(["cells greater than 5"], 48)
    seqs, hf = ar._draw(ids, mask, "beam", 4, 12, 0, 1.0, 1.0)
    ours = ar.sequence_scores(ids.repeat(4, 1), mask.repeat(4, 1), seqs)
    torch.testing.assert_close(hf, ours, atol=1e-4, rtol=1e-4)


def test_a_decoder_deeper_than_the_encoder_generates(tiny_tokenizer):
    """transformers 5 sizes its default cache by the encoder's depth: we pass our own."""
    torch.manual_seed(0)
    deep = ARBaseline.from_preset("tiny", tiny_tokenizer, code_len=8, num_decoder_layers=5)
    ids, mask, _ = tiny_tokenizer.encode_prompts(["top 3 sales", "blank"], 48)
    seqs, hf = deep._draw(ids, mask, "beam", 3, 8, 0, 1.0, 1.0)
    ours = deep.sequence_scores(ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), seqs)
    torch.testing.assert_close(hf, ours, atol=1e-4, rtol=1e-4)
    assert len(deep.generate("top 3 sales", k=2, mode="sample")) >= 1


def test_sampling_is_seeded_and_ranked(ar):
    prompts = ["cells greater than 5", "top 3 sales", "blank cells"]
    rng = torch.get_rng_state()
    a = ar.generate(prompts, k=3, mode="sample", seed=0)
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is left alone
    assert a == ar.generate(prompts, k=3, mode="sample", seed=0)
    assert a != ar.generate(prompts, k=3, mode="sample", seed=1)
    assert isinstance(a, list) and len(a) == 3 and all(1 <= len(c) <= 3 for c in a)
    for cands in a:
        scores = [c.score for c in cands]
        assert scores == sorted(scores, reverse=True)
        assert len({c.code for c in cands}) == len(cands)
    low_t = ar.generate(prompts[0], k=1, num_draws=1, mode="sample", temperature=1e-4)
    assert low_t[0].code == ar.generate(prompts[0], k=1, num_draws=1)[0].code  # greedy


def test_bad_inputs(ar):
    with pytest.raises(GenerationError, match="prompt 0 is empty"):
        ar.generate("   ")
    assert len(ar.generate("", k=2, allow_empty=True)) >= 1
    for kw, msg in [
        (dict(k=0), "k must be"),
        (dict(k=5, num_draws=3), "larger than the number of draws"),
        (dict(mode="greedy"), "mode must be"),
        (dict(mode="sample", temperature=0), "temperature"),
        (dict(mode="sample", top_p=0), "top_p"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ]:
        with pytest.raises(GenerationError, match=msg):
            ar.generate("x", **kw)
    with pytest.raises(GenerationError, match="not text"):
        ar.generate(["ok", 3])
    with pytest.raises(GenerationError, match="no prompts"):
        ar.generate([])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ar.generate("greater " * 100, k=1)
    assert any("truncated" in str(w.message) for w in caught)
    # CodeFusion's options are not the baseline's: an error, never silently ignored.
    with pytest.raises(GenerationError, match="ARBaseline takes no option 'clamp', 'steps'"):
        ar.generate("x", k=1, steps=5, clamp=True)


def test_cli_generates_with_a_baseline(ar, tmp_path, capsys):
    ar.save_pretrained(tmp_path / "m")
    m = str(tmp_path / "m")
    assert cli(["generate", "--model", m, "--k", "2", "--mode", "sample", "--json", "top 3"]) == 0
    (out,) = json.loads(capsys.readouterr().out)
    assert out["prompt"] == "top 3" and 1 <= len(out["candidates"]) <= 2
    assert cli(["generate", "--model", m, "--show-steps", "top 3"]) == 2
    assert "autoregressive" in capsys.readouterr().err
    assert cli(["generate", "--model", m, "--steps", "10", "top 3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ARBaseline takes no option 'steps'") and "mode" in err


def test_labels_cut_after_the_end_token():
    code = torch.tensor([[5, 6, 1, 0, 0], [5, 1, 7, 1, 0], [5, 6, 7, 8, 9]])
    assert labels_from_canvas(code, pad_id=0, eos_id=1).tolist() == [
        [5, 6, 1, -100, -100],
        [5, 1, -100, -100, -100],
        [5, 6, 7, 8, 9],
    ]


def test_loss_falls_on_a_synthetic_task(ar, tiny_tokenizer):
    """Copy task (prompt names a CF rule, target is that rule): 60 plain AdamW steps."""
    from codefusion.batch import Batch

    ids, mask, _ = tiny_tokenizer.encode_prompts(CF_PROMPTS, 24)
    code, _ = tiny_tokenizer.encode_code(CF_CODES, 12)
    batch = Batch(ids, mask, code, torch.zeros(len(CF_CODES), dtype=torch.bool))
    model = ar.model.train()
    module = TrainingModule(
        model, build_objective("t5-baseline", model), lr=3e-3, warmup_steps=1, max_steps=60
    )
    obj = module.objective
    assert isinstance(obj, Seq2SeqObjective)
    opt = torch.optim.AdamW(module.model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(60):
        loss = obj(module.model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.1 * first, (first, last)
    assert obj(module.model.eval(), batch)["token_acc"] > 0.9
    trained = ARBaseline(module.model, tiny_tokenizer)
    assert trained.generate(CF_PROMPTS[0], k=1)[0].code == CF_CODES[0]


def test_two_stage_run_exports_a_baseline(fixture_data, tmp_path, tiny_model):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"""
name: e2e
language: cf
out_dir: {tmp_path / "runs"}
data_dir: {fixture_data}
model: {{preset: tiny, code_len: 16}}
tokenizer: {{path: {tmp_path / "tok"}, vocab_size: 300, languages: [cf]}}
pretrain: {{max_steps: 4, batch_size: 8, val_every: 2, ckpt_every: 2, warmup_steps: 2}}
finetune: {{max_steps: 4, batch_size: 8, val_every: 2, ckpt_every: 2, warmup_steps: 2, val_fraction: 0.1}}
"""
    )
    assert train_main(["--config", str(cfg), "--no-progress", "--baseline"]) == 0
    run = tmp_path / "runs" / "e2e-ar"  # --baseline names the run <name>-ar
    assert (run / "finetune" / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "finetune" / "logs").rglob("metrics.csv"))
    gen = load_generator(run / "model")
    assert isinstance(gen, ARBaseline) and gen.config.code_len == 16
    assert len(gen.generate("cells greater than 5", k=2, mode="sample")) >= 1
    # Fine-tuning started from the pre-trained weights, not from scratch.
    pre = load_generator(run / "pretrain" / "model").model.state_dict()
    fin = gen.model.state_dict()
    assert any(not torch.equal(pre[k], fin[k]) for k in pre)
    # The baseline refuses to fine-tune a diffusion model (and the other way round).
    tiny_model.save_pretrained(tmp_path / "cf")
    from train.config import RunConfigError, load_run_config
    from train.run import run_stage

    rc = load_run_config(cfg, ["name=mismatch", "model.architecture=t5-baseline"])
    with pytest.raises(RunConfigError, match="is not a model of architecture t5-baseline"):
        run_stage(rc, "finetune", init_from=tmp_path / "cf", progress=False)
    # A CodeFusion-only model key, or an unknown architecture, is a clear error.
    # (said when the config is read, before anything runs)
    with pytest.raises(RunConfigError, match=r"model \(t5-baseline\): .*self_condition"):
        load_run_config(cfg, ["model.architecture=t5-baseline", "model.self_condition=true"])
    with pytest.raises(RunConfigError, match="model.architecture must be one of"):
        load_run_config(cfg, ["model.architecture=rnn"])


def test_a_config_and_its_baseline_have_equal_sizes(tiny_tokenizer, tmp_path):
    """One config, two architectures: the baseline's lengths are the CodeFusion preset's."""
    from train.config import load_run_config
    from train.run import build_generator

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {preset: small, code_len: 20}\n")
    for name in ("tiny", "small"):
        cf = build_generator(load_run_config(cfg, [f"model.preset={name}"]), tiny_tokenizer)
        ar = build_generator(
            load_run_config(cfg, [f"model.preset={name}", "model.architecture=t5-baseline"]),
            tiny_tokenizer,
        )
        assert isinstance(cf, CodeFusion) and isinstance(ar, ARBaseline)
        assert (ar.config.max_prompt_len, ar.config.code_len) == (
            cf.config.max_prompt_len,
            cf.config.code_len,
        )
        ratio = ar.num_parameters() / cf.num_parameters()  # 1.02-1.04 with a 1K vocabulary
        assert 0.9 < ratio < 1.25, (name, ratio)


def test_training_flops_count_every_weight(ar):
    """estimate_flops (the MFU of bench/reproduce.py's baseline runs): 2 x weights x tokens
    for each Linear, the tied head included, plus attention; a training step is 3 forwards."""
    from codefusion.flops import t5_flops as estimate_flops

    model = ar.model
    cfg = model.config
    f = estimate_flops(model, batch_size=4, prompt_len=10)
    assert f["train_step"] == pytest.approx(3 * f["forward"])
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) - (
        model.lm_head.weight.numel() if isinstance(model.lm_head, torch.nn.Linear) else 0
    )
    head = cfg.vocab_size * cfg.d_model
    tokens = 4 * max(10, int(cfg.code_len))
    low = 2 * (linear + head) * 4 * min(10, int(cfg.code_len))
    assert low < f["forward"] < 2 * (linear + head) * tokens + 4 * 4 * 10**2 * 10**4
    assert estimate_flops(model, 8, 10)["forward"] == pytest.approx(2 * f["forward"])
