"""Generation: the cached sampler, top-k ranking, determinism, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

from codefusion.cli import main as cli
from codefusion.errors import GenerationError, ModelLoadError
from codefusion.model import attention_mask
from codefusion.pipeline import Candidate, CodeFusion, rank_candidates
from codefusion.sampling import SamplingOptions, sample
from codefusion.sampling.denoise import nearest_embedding


def _perturb(model, seed=1):
    """Random weights everywhere (zero-initialised modulation would hide differences)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("steps", [None, 20])
def test_cached_cross_attention_equals_uncached(tiny_model, steps):
    m = tiny_model.model
    _perturb(m)
    enc = torch.randn(3, 7, m.encoder_dim)
    mask = attention_mask(torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 7]))
    if steps is None:  # all 1200 steps is slow on CPU with the uncached path: shorten T
        tiny_model.schedule.__init__(60)

    def run(cached: bool):
        opts = SamplingOptions(steps=steps, eta=0.5, cache_cross_kv=cached)
        gen = torch.Generator().manual_seed(3)
        return sample(m, tiny_model.schedule, enc, mask, 2, gen, opts)

    a, b = run(True), run(False)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.tokens, b.tokens)


def test_rank_candidates_dedupes_sorts_and_cuts():
    out = rank_candidates(["a", "b", "a", "c"], [-3.0, -2.0, -1.0, -5.0], k=2)
    assert out == [Candidate("a", -1.0), Candidate("b", -2.0)]


def test_syntax_rank_moves_unparseable_down():
    out = rank_candidates(["x = (", "x = 1"], [-1.0, -2.0], k=2, syntax_rank="python")
    assert [c.code for c in out] == ["x = 1", "x = ("]


def test_generate_is_deterministic_given_the_seed(tiny_model):
    _perturb(tiny_model.model)
    a = tiny_model.generate(["cells greater than 5", "blank"], k=3, num_draws=4, steps=10, seed=7)
    b = tiny_model.generate(["cells greater than 5", "blank"], k=3, num_draws=4, steps=10, seed=7)
    assert a == b and len(a) == 2 and 1 <= len(a[0]) <= 3
    scores = [c.score for c in a[0]]
    assert scores == sorted(scores, reverse=True)
    assert len({c.code for c in a[0]}) == len(a[0])


def test_ancestral_sampling_and_clamping_run(tiny_model):
    _perturb(tiny_model.model)
    out = tiny_model.generate("x", k=2, steps=8, eta=1.0, clamp=True, seed=1)
    assert 1 <= len(out) <= 2


def test_nearest_embedding_returns_table_rows():
    table = torch.nn.functional.normalize(torch.randn(10, 4), dim=-1)
    x = table[[3, 7]] + 0.01 * torch.randn(2, 4)
    assert torch.equal(nearest_embedding(x, table), table[[3, 7]])


@pytest.mark.parametrize(
    "prompts, kwargs, message",
    [
        ("", {}, "prompt 0 is empty"),
        (["ok", "   \n"], {}, "prompt 1 is empty"),
        ("ok", {"k": 5, "num_draws": 3}, "larger than the number of draws"),
        ("ok", {"k": 0}, "k must be at least 1"),
        ("ok", {"steps": 5000}, "steps must be between"),
        ("ok", {"mode": "beam"}, "CodeFusion takes no option 'mode'"),
        ([], {}, "no prompts"),
    ],
)
def test_bad_generation_requests(tiny_model, prompts, kwargs, message):
    with pytest.raises(GenerationError, match=message):
        tiny_model.generate(prompts, **kwargs)


def test_long_prompt_is_truncated_with_a_warning(tiny_model):
    with pytest.warns(UserWarning, match="truncated"):
        tiny_model.generate("greater " * 500, k=1, num_draws=1, steps=2)


def test_other_scripts_are_fine_and_control_characters_are_removed_with_a_warning(tiny_model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = tiny_model.generate(
            ["値が5より大きい", "\x00\x07tab\there", "🙂 emoji"], k=1, num_draws=1, steps=2
        )
    assert len(out) == 3
    messages = [str(w.message) for w in caught]
    assert messages == ["prompt 1: 2 control character(s) removed"], messages


@pytest.fixture()
def model_dir(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_cli_generate_json(model_dir, capsys):
    assert (
        cli(
            [
                "generate",
                "--model",
                str(model_dir),
                "--k",
                "2",
                "--steps",
                "4",
                "--json",
                "cells > 5",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)  # always a list, one object per prompt
    assert len(out) == 1 and out[0]["prompt"] == "cells > 5"
    assert 1 <= len(out[0]["candidates"]) <= 2


def test_cli_show_steps(model_dir, capsys):
    assert cli(["generate", "--model", str(model_dir), "--steps", "8", "--show-steps", "x"]) == 0
    err = capsys.readouterr().err
    assert "t= 1199" in err and "t=    0" in err


def test_model_dir_problems_are_one_line_errors(model_dir, tmp_path, capsys):
    assert cli(["generate", "--model", str(tmp_path / "nope"), "x"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: model directory {tmp_path / 'nope'} does not exist"
    )
    (model_dir / "model.safetensors").rename(tmp_path / "w.safetensors")
    assert cli(["generate", "--model", str(model_dir), "x"]) == 2
    assert "missing model.safetensors" in capsys.readouterr().err


def test_mismatched_config_is_a_clear_error(model_dir):
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["hidden_dim"] = 32
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="weights do not load into the model"):
        CodeFusion.from_pretrained(model_dir)
    cfg["vocab_size"] = 7
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="does not match the tokenizer"):
        CodeFusion.from_pretrained(model_dir)


def test_truncated_weights_file_is_a_clear_error(model_dir):
    w = model_dir / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        CodeFusion.from_pretrained(model_dir)


def test_cli_errors_have_no_traceback(model_dir):
    r = subprocess.run(
        [sys.executable, "-m", "codefusion.cli", "generate", "--model", str(model_dir), "  "],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: prompt 0 is empty"


def test_votes_ranking_orders_by_agreement_then_score():
    from codefusion.generator import rank_candidates

    codes = ["a", "b", "b", "c", "b", "c"]
    scores = [-0.1, -2.0, -3.0, -1.0, -2.5, -1.5]
    assert [c.code for c in rank_candidates(codes, scores, k=3)] == ["a", "c", "b"]
    voted = rank_candidates(codes, scores, k=3, rank="votes")
    assert [c.code for c in voted] == ["b", "c", "a"] and voted[0].score == -2.0
    with pytest.raises(GenerationError, match="rank must be"):
        rank_candidates(codes, scores, k=3, rank="loudest")
