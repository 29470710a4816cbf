"""Sampling with given positions (the end of a chosen length; later, infilling)."""

from __future__ import annotations

import pytest
import torch

from codefusion.config import preset
from codefusion.errors import GenerationError
from codefusion.model import attention_mask
from codefusion.pipeline import CodeFusion, build_model, length_known
from codefusion.sampling import Known, SamplingOptions, sample


def _cf(tok, **kw):
    torch.manual_seed(0)
    cf = CodeFusion(build_model(preset("tiny", code_len=16, **kw), tok), tok)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in cf.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return cf


def test_length_known_puts_the_end_token_at_the_length():
    k = length_known(torch.tensor([0, 2, 4]), 5, eos_id=1, pad_id=0)
    assert k.mask.tolist() == [[True] * 5, [False, False, True, True, True], [False] * 4 + [True]]
    assert k.tokens[1, 2:].tolist() == [1, 0, 0] and k.tokens[2, 4] == 1


@pytest.mark.parametrize("self_condition", [False, True])
def test_given_tokens_are_kept_exactly(tiny_tokenizer, self_condition):
    cf = _cf(tiny_tokenizer, self_condition=self_condition)
    m = cf.model
    n, c = 4, m.config.code_len
    enc = torch.randn(n, 5, m.encoder_dim)
    mask = attention_mask(torch.ones(n, 5, dtype=torch.long))
    given = torch.randint(5, m.config.vocab_size, (n, c))
    where = torch.rand(n, c) < 0.5
    out = sample(
        m,
        cf.schedule,
        enc,
        mask,
        torch.Generator().manual_seed(0),
        SamplingOptions(steps=8),
        known=Known(where, given),
        trace_at={0},
    )
    assert torch.equal(out.tokens[where], given[where])
    assert torch.equal(out.trace[0][1][where], given[where])


def test_predicted_length_fixes_where_each_draw_ends(tiny_tokenizer):
    cf = _cf(tiny_tokenizer, length_head=True)
    out = cf.sample_draws(
        ["cells greater than 5"], num_draws=6, steps=5, length="predicted", length_candidates=3
    )
    enc = cf.model.encode(*cf.tokenizer.encode_prompts(["cells greater than 5"], 48)[:2])
    mask = cf.tokenizer.encode_prompts(["cells greater than 5"], 48)[1]
    lengths = cf.draw_lengths(enc, mask, 6, 3)
    assert len(set(lengths.tolist())) == 3 and lengths.tolist()[:3] == lengths.tolist()[3:]
    for row, n in zip(out.tokens.tolist(), lengths.tolist(), strict=True):
        assert row[n] == cf.config.eos_id and all(t == cf.config.pad_id for t in row[n + 1 :])
        assert cf.tokenizer.decode(row) == cf.tokenizer.decode(row[:n])  # cut at the first end
    cands = cf.generate("cells greater than 5", k=3, steps=5, length="predicted")
    assert 1 <= len(cands) <= 3


def test_length_option_errors(tiny_tokenizer):
    cf = _cf(tiny_tokenizer)
    with pytest.raises(GenerationError, match="length head"):
        cf.generate("x", steps=2, length="predicted")
    with pytest.raises(GenerationError, match="length must be"):
        cf.generate("x", steps=2, length="guess")
    cf = _cf(tiny_tokenizer, length_head=True)
    with pytest.raises(GenerationError, match="length_candidates"):
        cf.generate("x", steps=2, length="predicted", length_candidates=0)
