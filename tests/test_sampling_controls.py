"""Sampling controls: given positions, and the prompt's E(s) and K/V shared by its draws."""

from __future__ import annotations

import pytest
import torch

from codefusion.config import preset
from codefusion.model import attention_mask
from codefusion.pipeline import CodeFusion, build_model
from codefusion.sampling import Known, SamplingOptions, sample


def _cf(tok, **kw):
    torch.manual_seed(0)
    cf = CodeFusion(build_model(preset("tiny", code_len=16, **kw), tok), tok)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in cf.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return cf


@pytest.mark.parametrize("self_condition", [False, True])
def test_given_tokens_are_kept_exactly(tiny_tokenizer, self_condition):
    cf = _cf(tiny_tokenizer, self_condition=self_condition)
    m = cf.model
    p, draws, c = 2, 2, m.config.code_len
    enc = torch.randn(p, 5, m.encoder_dim)
    mask = attention_mask(torch.ones(p, 5, dtype=torch.long))
    given = torch.randint(5, m.config.vocab_size, (p * draws, c))
    where = torch.rand(p * draws, c) < 0.5
    out = sample(
        m,
        cf.schedule,
        enc,
        mask,
        draws,
        torch.Generator().manual_seed(0),
        SamplingOptions(steps=8),
        known=Known(where, given),
        trace_at={0},
    )
    assert torch.equal(out.tokens[where], given[where])
    assert torch.equal(out.trace[0][1][where], given[where])


@pytest.mark.parametrize(
    "options", [dict(steps=8), dict(steps=8, eta=0.7), dict(steps=8, clamp=True), dict(steps=None)]
)
def test_draws_share_their_prompts_keys_and_values(tiny_tokenizer, monkeypatch, options):
    """P prompts x D draws, E(s) and its cross-attention K/V once per prompt, equal P x D
    one-draw prompts whose E(s) is repeated per draw (the K/V projections then run on every
    row): the same x_T, the same tokens."""
    cf = _cf(tiny_tokenizer, self_condition=True)
    m = cf.model
    cf.schedule.__init__(60)
    enc = torch.randn(3, 6, m.encoder_dim, generator=torch.Generator().manual_seed(5))
    mask = attention_mask(torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3]))
    rows = []
    real = m.denoiser.cross_kv
    monkeypatch.setattr(m.denoiser, "cross_kv", lambda e: rows.append(e.shape[0]) or real(e))
    opts = SamplingOptions(**options)
    shared = sample(m, cf.schedule, enc, mask, 4, torch.Generator().manual_seed(3), opts)
    assert rows == [3]  # once per prompt, not per draw or step
    rep = lambda a: a.repeat_interleave(4, 0)  # noqa: E731
    each = sample(m, cf.schedule, rep(enc), rep(mask), 1, torch.Generator().manual_seed(3), opts)
    assert torch.equal(shared.tokens, each.tokens)
    torch.testing.assert_close(shared.scores, each.scores, atol=1e-5, rtol=1e-5)
