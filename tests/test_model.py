"""The network and the diffusion pieces: shapes, masks, schedule, loss, save/load, sizes."""

from __future__ import annotations

import torch

from codefusion.config import preset
from codefusion.diffusion import Batch, CodeFusionObjective, content_mask, position_weights
from codefusion.model import CodeFusionModel, attention_mask
from codefusion.pipeline import CodeFusion
from codefusion.schedule import SqrtSchedule


def test_sqrt_schedule_is_monotone_and_bounded():
    s = SqrtSchedule(1200)
    ab = s.alphas_cumprod
    assert ab.shape == (1200,) and bool((ab[1:] < ab[:-1]).all())
    assert 0.95 < ab[0] < 1.0 and 0 < ab[-1] < 1e-2
    assert s.timesteps()[:2] == [1199, 1198] and s.timesteps()[-1] == 0
    ts = s.timesteps(100)
    assert len(ts) == 100 and ts[0] == 1199 and ts[-1] == 0 and ts == sorted(ts, reverse=True)


def test_q_sample_and_its_inverses_agree():
    s = SqrtSchedule(1200)
    x0, eps = torch.randn(4, 8, 16), torch.randn(4, 8, 16)
    t = torch.tensor([0, 10, 600, 1199])
    x_t = s.q_sample(x0, t, eps)
    torch.testing.assert_close(s.eps_from_x0(x_t, t, x0), eps, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(s.x0_from_eps(x_t[:3], t[:3], eps[:3]), x0[:3], atol=1e-4, rtol=1e-4)


def test_position_weights_put_content_first():
    ids = torch.tensor([[5, 6, 1, 0, 0, 0], [7, 1, 0, 0, 0, 0]])  # 1 = </s>, 0 = <pad>
    assert content_mask(ids, 0, 1).tolist()[0] == [True, True, True, False, False, False]
    w = position_weights(ids, pad_id=0, eos_id=1, pad_weight=0.1)
    torch.testing.assert_close(w.sum(1), torch.tensor([1.1, 1.1]))
    torch.testing.assert_close(w[0, :3], torch.full((3,), 1 / 3))
    torch.testing.assert_close(w[1, 2:], torch.full((4,), 0.1 / 4))


def test_paper_config_totals_70_to_80_million_parameters():
    counts = CodeFusionModel(preset("paper", vocab_size=16384)).parameter_counts()
    assert 70e6 <= counts["total"] <= 80e6
    assert counts["denoiser N"] > counts["decoder D"] > 0


def test_prompt_padding_is_masked(tiny_model):
    m = tiny_model.model
    ids = torch.randint(4, 50, (1, 6))
    padded = torch.cat([ids, torch.randint(4, 50, (1, 3))], 1)  # garbage in padded slots
    mask = torch.tensor([[1] * 6 + [0] * 3])
    x, t = torch.randn(1, 16, m.config.latent_dim), torch.tensor([500])
    with torch.no_grad():
        a_enc = m.encode(ids, torch.ones_like(ids))
        b_enc = m.encode(padded, mask)
        a = m.denoise(x, t, m.cross_kv(a_enc)[0], attention_mask(torch.ones_like(ids)))
        b = m.denoise(x, t, m.cross_kv(b_enc)[0], attention_mask(mask))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_objective_terms_are_finite_and_differentiable(tiny_model, tiny_tokenizer):
    m = tiny_model.model.train()
    ids, mask, _ = tiny_tokenizer.encode_prompts(["cells greater than 5", "x"], 24)
    code, _ = tiny_tokenizer.encode_code(["GreaterThan(5)", "Blanks()"], 16)
    batch = Batch(ids, mask, code, torch.tensor([False, True]))
    out = CodeFusionObjective(tiny_model.schedule)(m, batch, with_accuracy=True)
    assert set(out) == {"loss", "noise", "decoder", "ce", "token_acc"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[:5])


def test_code_embedding_has_fixed_norm(tiny_model):
    e = tiny_model.model.embed_code(torch.arange(20))
    torch.testing.assert_close(e.norm(dim=-1), torch.full((20,), e.shape[-1] ** 0.5))


def test_save_load_round_trip_is_bit_identical(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    loaded = CodeFusion.from_pretrained(tmp_path / "m")
    a, b = tiny_model.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config == tiny_model.config
    assert loaded.generate("cells greater than 5", k=2, steps=5) == tiny_model.generate(
        "cells greater than 5", k=2, steps=5
    )
