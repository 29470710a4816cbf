"""The objective's options, read as a specification: what each term trains, and on what."""

from __future__ import annotations

import random

import pytest
import torch

from bench.fixtures import CF_CODES, CF_PROMPTS
from codefusion.config import preset
from codefusion.diffusion import NOISE_WEIGHTINGS, Batch, CodeFusionObjective
from codefusion.pipeline import CodeFusion, build_model


def _batch(tok, code_len=16, uncond=False):
    ids, mask, _ = tok.encode_prompts(CF_PROMPTS, 24)
    code, _ = tok.encode_code(CF_CODES, code_len)
    return Batch(ids, mask, code, torch.full((len(CF_CODES),), uncond))


def _model(tok, **overrides):
    torch.manual_seed(0)
    return CodeFusion(build_model(preset("tiny", code_len=16, **overrides), tok), tok)


def _grad_norm(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_snr_weighting_is_the_papers_noise_error(tiny_tokenizer):
    """||eps_hat - eps||^2 with eps_hat derived from x0_hat equals SNR(t) ||x0_hat - x0||^2."""
    cf = _model(tiny_tokenizer)
    s = cf.schedule
    x0, eps = torch.randn(4, 16, 32), torch.randn(4, 16, 32)
    t = torch.tensor([0, 5, 600, 1199])
    x_t = s.q_sample(x0, t, eps)
    x0_hat = x0 + 0.1 * torch.randn_like(x0)
    literal = (s.eps_from_x0(x_t, t, x0_hat) - eps).pow(2).mean((1, 2))
    weighted = NOISE_WEIGHTINGS["snr"](s.snr(t)) * (x0_hat - x0).pow(2).mean((1, 2))
    torch.testing.assert_close(literal, weighted, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("weighting", sorted(NOISE_WEIGHTINGS))
@pytest.mark.parametrize("decoder_input", ["x0_hat", "clean"])
def test_every_option_gives_a_finite_loss_and_gradients(tiny_tokenizer, weighting, decoder_input):
    cf = _model(tiny_tokenizer, self_condition=True)
    obj = CodeFusionObjective(
        cf.schedule, noise_weighting=weighting, decoder_input=decoder_input, self_cond_prob=1.0
    )
    out = obj(cf.model.train(), _batch(tiny_tokenizer))
    assert set(out) >= {"loss", "noise", "decoder", "ce"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for part in ("encoder", "denoiser", "decoder", "head", "code_embedding"):
        assert _grad_norm(getattr(cf.model, part)) > 0, part


def test_a_decoder_trained_on_clean_code_sends_no_gradient_into_n(tiny_tokenizer):
    """With D on L(y), the decoder term and the cross-entropy train D, H, L and E, never N;
    with the paper's reading (D on x0_hat) they reach N through x0_hat."""
    for decoder_input, reaches_n in (("clean", False), ("x0_hat", True)):
        cf = _model(tiny_tokenizer)
        obj = CodeFusionObjective(cf.schedule, decoder_input=decoder_input, weights=(0.0, 1.0, 1.0))
        obj(cf.model.train(), _batch(tiny_tokenizer))["loss"].backward()
        assert (_grad_norm(cf.model.denoiser) > 0) is reaches_n, decoder_input
        assert _grad_norm(cf.model.decoder) > 0


def test_self_conditioning_reads_the_first_estimate(tiny_tokenizer, monkeypatch):
    """A self-conditioned step calls N twice: first with zeros for the estimate (always a
    tensor: one signature for a compiled N), then with the first estimate (detached); the coin
    comes from Python's RNG (saved in checkpoints)."""
    cf = _model(tiny_tokenizer, self_condition=True)
    calls = []
    real = cf.model.denoise

    def spy(x_t, t, kv, mask, x0_prev=None, *rest):
        calls.append(x0_prev)
        return real(x_t, t, kv, mask, x0_prev, *rest)

    monkeypatch.setattr(cf.model, "denoise", spy)
    obj = CodeFusionObjective(cf.schedule, self_cond_prob=1.0)
    obj(cf.model.train(), _batch(tiny_tokenizer))
    assert len(calls) == 2 and not calls[0].any() and not calls[1].requires_grad
    assert calls[1].abs().sum() > 0
    calls.clear()
    CodeFusionObjective(cf.schedule, self_cond_prob=0.0)(cf.model, _batch(tiny_tokenizer))
    assert len(calls) == 1 and not calls[0].any()
    assert cf.model.denoiser.in_proj.in_features == 2 * cf.config.latent_dim


def test_bad_options_are_errors(tiny_tokenizer):
    s = _model(tiny_tokenizer).schedule
    with pytest.raises(ValueError, match="noise_weighting"):
        CodeFusionObjective(s, noise_weighting="eps2")
    with pytest.raises(ValueError, match="decoder_input"):
        CodeFusionObjective(s, decoder_input="blurred")


def test_validation_leaves_the_training_rng_alone(tiny_tokenizer):
    from train.module import TrainingModule
    from train.objectives import build_objective

    cf = _model(tiny_tokenizer, self_condition=True)
    module = TrainingModule(cf.model, build_objective("codefusion", cf.model))
    random.seed(7)
    torch.manual_seed(7)
    want_py, want_torch = random.random(), torch.rand(1)
    random.seed(7)
    torch.manual_seed(7)
    module.validation_step(_batch(tiny_tokenizer), 0)
    assert random.random() == want_py and torch.equal(torch.rand(1), want_torch)
