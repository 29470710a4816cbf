"""Masked diffusion (codefusion/absorbing.py, codefusion/masked.py): the loss, the sampler's
guarantees, the generator's API and CLI, and both training stages through ``--masked``."""

from __future__ import annotations

import json

import pytest
import torch

from codefusion.absorbing import mask_canvas, masked_loss, sample_times, still_masked, unmask
from codefusion.auto import load_generator
from codefusion.errors import GenerationError
from codefusion.masked import MaskedDiffusion, masked_preset
from tests.conftest import CF_CODES, CF_PROMPTS

MASK = 3


@pytest.fixture()
def masked(tiny_tokenizer) -> MaskedDiffusion:
    torch.manual_seed(0)
    return MaskedDiffusion.from_preset("tiny", tiny_tokenizer, code_len=16)


def _net(vocab: int = 11, seed: int = 0):
    """A deterministic stand-in network: logits that depend on the whole canvas."""
    w = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))

    def net(z: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.one_hot(z, vocab).float() @ w
        return h + h.mean(1, keepdim=True)

    return net


def test_the_loss_is_zero_where_nothing_is_masked_and_weighted_by_one_over_t():
    logits = torch.randn(2, 5, 11)
    x = torch.randint(4, 11, (2, 5))
    t = torch.tensor([0.5, 0.25])
    nothing = torch.zeros(2, 5, dtype=torch.bool)
    assert masked_loss(logits, x, nothing, t, MASK)["loss"].item() == 0.0
    one = nothing.clone()
    one[1, 2] = True
    nll = -torch.log_softmax(logits[1, 2].masked_fill(torch.arange(11) == MASK, -1e9), -1)[x[1, 2]]
    got = masked_loss(logits, x, one, t, MASK)["loss"]
    assert torch.allclose(got, nll / 0.25 / x.numel(), atol=1e-5)


def test_the_forward_process_masks_a_share_t_and_times_cover_the_interval():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(4, 11, (4000, 8))
    t = torch.full((4000,), 0.3)
    z, m = mask_canvas(x, t, MASK, g)
    assert abs(m.float().mean().item() - 0.3) < 0.01
    assert torch.equal(z[~m], x[~m]) and bool((z[m] == MASK).all())
    ts = sample_times(1000, g, torch.device("cpu"))
    assert ts.min() >= 1e-3 and ts.max() <= 1 and abs(ts.mean().item() - 0.5) < 0.01


def test_given_tokens_never_change_and_every_position_ends_unmasked():
    g = torch.Generator().manual_seed(1)
    z = torch.full((6, 10), MASK)
    z[:, [0, 4, 9]] = torch.tensor([5, 6, 7])
    out, logp, _, _ = unmask(_net(), z, MASK, steps=4, gen=g)
    assert bool((out[:, [0, 4, 9]] == torch.tensor([5, 6, 7])).all())
    assert not bool((out == MASK).any())
    assert bool((logp[:, [0, 4, 9]] == 0).all()) and bool((logp[:, 1] < 0).all())


@pytest.mark.parametrize("order", ["random", "confidence"])
def test_as_many_steps_as_positions_unmask_one_each(order):
    g = torch.Generator().manual_seed(2)
    z = torch.full((3, 7), MASK)
    steps = 7
    _, _, trace, _ = unmask(_net(), z, MASK, steps, g, order, trace_at=set(range(1, 8)))
    left = [int((c == MASK).sum(1).max()) for _, c in trace]
    assert left == [6, 5, 4, 3, 2, 1, 0]
    assert still_masked(torch.tensor([7]), 3, 7).item() == 4


def test_the_cached_sampler_equals_the_uncached_one_with_fewer_calls():
    z = torch.full((4, 6), MASK)
    z[0, 2] = 9  # rows with different numbers of masked positions
    runs = {}
    for cache in (True, False):
        g = torch.Generator().manual_seed(3)
        runs[cache] = unmask(_net(), z, MASK, steps=20, gen=g, cache=cache)
    (a, la, _, calls_a), (b, lb, _, calls_b) = runs[True], runs[False]
    assert torch.equal(a, b) and torch.equal(la, lb)
    # Cached: a call only when something was unmasked since the last one; the rows unmask 5
    # and 6 positions over 20 steps, at no more than 11 distinct steps.
    assert calls_b == 20 and calls_a <= 11


def test_sizes_are_codefusions_and_the_paper_preset_is_within_70_80m():
    from codefusion.masked import MaskedModel

    with torch.device("meta"):
        n = MaskedModel(masked_preset("paper", vocab_size=16384)).parameter_counts()["total"]
    assert 70e6 <= n <= 80e6, n
    cfg = masked_preset("tiny", code_len=16)
    assert (cfg.denoiser_layers, cfg.decoder_layers, cfg.hidden_dim) == (2, 1, 64)


def test_save_load_generate_infill_and_clear_option_errors(masked, tmp_path):
    masked.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architecture"] == "masked"
    gen = load_generator(tmp_path / "m")
    assert isinstance(gen, MaskedDiffusion)
    a = gen.generate("cells greater than 5", k=2, steps=4, seed=7)
    assert a == gen.generate("cells greater than 5", k=2, steps=4, seed=7)  # seeded
    assert 1 <= len(a) <= 2
    for cand in gen.infill("GreaterThan(<fill:2>)", "cells greater than 5", k=3, steps=5):
        assert cand.code.startswith("GreaterThan(") and cand.code.endswith(")")
        assert len(cand.fills) == 1
    with pytest.raises(GenerationError, match="takes no option 'eta'"):
        gen.generate("x", eta=0.5)
    with pytest.raises(GenerationError, match="steps must be at least 1"):
        gen.generate("x", steps=0)
    # More steps than positions unmask nobody in the extra steps: the same as one per position.
    assert gen.generate("x", k=2, steps=500) == gen.generate("x", k=2, steps=16)


def test_a_tiny_model_overfits_a_handful_of_pairs(masked, tiny_tokenizer):
    from codefusion.batch import Batch
    from train.objectives import build_objective

    n, copies = 4, 8  # each pair 8 times a batch: more masks seen per step
    ids, mask, _ = tiny_tokenizer.encode_prompts(CF_PROMPTS[:n], 24)
    code, _ = tiny_tokenizer.encode_code(CF_CODES[:n], 16)
    rep = lambda t: t.repeat(copies, 1)  # noqa: E731
    batch = Batch(rep(ids), rep(mask), rep(code), torch.zeros(n * copies, dtype=torch.bool))
    model = masked.model.train()
    obj = build_objective("masked", model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    torch.manual_seed(0)
    for _ in range(200):
        loss = obj(model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    gen = MaskedDiffusion(model.eval(), tiny_tokenizer)
    tops = gen.generate(CF_PROMPTS[:n], k=1)
    assert [t[0].code for t in tops] == CF_CODES[:n]


def test_cli_and_training_with_masked(fixture_data, tmp_path, capsys):
    from codefusion.cli import main as cli
    from train.__main__ import main as train_main

    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"""
name: e2e
language: cf
out_dir: {tmp_path / "runs"}
data_dir: {fixture_data}
model: {{preset: tiny, code_len: 16}}
tokenizer: {{path: {tmp_path / "tok"}, vocab_size: 300, languages: [cf]}}
pretrain: {{max_steps: 3, batch_size: 8, val_every: 2, ckpt_every: 2, warmup_steps: 1}}
finetune: {{max_steps: 3, batch_size: 8, val_every: 2, ckpt_every: 2, warmup_steps: 1, val_fraction: 0.1}}
"""
    )
    assert train_main(["--config", str(cfg), "--no-progress", "--masked"]) == 0
    model = tmp_path / "runs" / "e2e-masked" / "model"  # --masked names the run <name>-masked
    pre = load_generator(model.parent / "pretrain" / "model").model.state_dict()
    fin = load_generator(model).model.state_dict()
    assert any(not torch.equal(pre[k], fin[k]) for k in pre)  # fine-tuned from stage 1
    capsys.readouterr()
    argv = ["generate", "--model", str(model), "--k", "2", "--steps", "4", "--json"]
    assert cli([*argv, "--show-steps", "--order", "confidence", "cells greater than 5"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["candidates"] and "step=    4" in out.err
    assert cli(["generate", "--model", str(model), "--eta", "1", "x"]) == 2
    assert "takes no option 'eta'" in capsys.readouterr().err
    assert cli(["edit", "--model", str(model), "A", "x"]) == 2
    assert "edit needs continuous CodeFusion" in capsys.readouterr().err
    assert cli(["infill", "--model", str(model), "--k", "1", "GreaterThan(<fill>)", "x"]) == 0
    assert train_main(["--config", str(cfg), "--masked", "--baseline"]) == 2


def test_a_budgeted_run_trains_and_evaluates_the_masked_model(fixture_data, tmp_path, monkeypatch):
    """bench/reproduce.py --benchmark cf --masked: both stages and the evaluation inside the
    budget, at the tiny size on CPU (the paper size on a GPU the same way)."""
    from bench import reproduce

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = ["--benchmark", "cf", "--masked", "--budget-minutes", "0.35", "--out", str(out)]
    argv += ["--preset", "tiny", "--data", str(fixture_data), "--device", "cpu", "--no-progress"]
    argv += ["--set", f"tokenizer.path={tmp_path / 'tok'}", "--set", "tokenizer.vocab_size=300"]
    argv += ["--set", "tokenizer.languages=[cf]", "--eval-batch-size", "8"]
    assert reproduce.main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["architecture"] == "masked" and run["system"].startswith("Masked diffusion tiny")
    assert all(run["stages"][s]["steps"] >= 1 for s in ("pretrain", "finetune"))
    assert run["eval"]["steps"] in (32, 25, 10) and run["eval"]["items"] >= 1  # <= canvas (32)
    assert json.loads((out / "metrics.json").read_text())["n"] == run["eval"]["items"]


def test_the_copy_head_mixes_a_pointer_over_the_prompt_into_h(tiny_tokenizer):
    """With the copy head the network's output is a distribution; its gate shut, every token's
    mass comes from the prompt (a pointer can only name prompt tokens); its gate open, it is
    H's softmax. Sampling reads it like logits, so a pointer-only model writes prompt tokens."""
    torch.manual_seed(0)
    gen = MaskedDiffusion.from_preset("tiny", tiny_tokenizer, code_len=8, copy=True)
    model = gen.model.eval()
    assert "copy head" in model.parameter_counts()
    prompts = ["cells greater than 57", "top 3 sales"]
    ids, mask, _ = tiny_tokenizer.encode_prompts(prompts, 12)
    z = torch.full((2, 8), MASK)
    with torch.no_grad():
        logp = model(ids, mask, z)
        assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 8), atol=1e-5)
        model.copy.gate.weight.zero_()
        model.copy.gate.bias.fill_(-40.0)  # g = 0: the pointer alone
        p = model(ids, mask, z).exp()
        for row, prompt_ids in enumerate(ids):
            in_prompt = p[row][:, prompt_ids[mask[row].bool()].unique()].sum(-1)
            assert torch.allclose(in_prompt, torch.ones(8), atol=1e-5)
        for cand in gen.generate(prompts[0], k=3, steps=8):
            assert set(tiny_tokenizer.encode_code([cand.code], 8)[0][0].tolist()) - {0, 1} <= set(
                ids[0].tolist()
            )
        model.copy.gate.bias.fill_(40.0)  # g = 1: H alone
        p_open = model(ids, mask, z).exp()
        copy, model.copy = model.copy, None
        logits = model(ids, mask, z)
        model.copy = copy
    logits[..., MASK] = float("-inf")  # [MASK] is never the answer, with or without the head
    assert torch.allclose(p_open, logits.softmax(-1), atol=1e-5)
