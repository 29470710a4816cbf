"""The fast paths: the CUDA-graph runner's step function (run eagerly here) against the plain
DDIM loop, the ``fast`` option on CPU, the FLOPs formula and the benchmark's ``--quick`` mode
end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codefusion.model import attention_mask
from codefusion.sampling import Known, SamplingOptions, loop, sample
from codefusion.sampling import graph as graph_mod
from codefusion.sampling.graph import DenoiseStep, sample_graph
from codefusion.tokenizer import prompt_bucket

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "benchmark.py"


def _perturb(model, seed=1):
    """Random weights everywhere (the zero-initialised modulation would hide differences)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


DRAWS = 2  # per prompt: 3 prompts x 2 draws


def _inputs(m, prompt_len=7):
    enc = torch.randn(3, prompt_len, m.encoder_dim, generator=torch.Generator().manual_seed(5))
    rows = [[1] * prompt_len, [1] * 4 + [0] * (prompt_len - 4), [1] * prompt_len]
    return enc, attention_mask(torch.tensor(rows))


def _record_decoded(monkeypatch):
    """Record the x0 each sampler hands to D (the final latent, and the traced ones)."""
    seen: list[torch.Tensor] = []
    real = loop.decode_tokens

    def spy(model, x0, kv, mask, known=None, prompt=None):
        seen.append(x0.clone())
        return real(model, x0, kv, mask, known, prompt)

    monkeypatch.setattr(loop, "decode_tokens", spy)
    monkeypatch.setattr(graph_mod, "decode_tokens", spy)
    return seen


@pytest.mark.parametrize(
    "steps, eta, clamp, masked, prediction",
    [
        (None, 0.0, False, True, "x0"),  # all T steps, deterministic
        (13, 0.5, False, False, "x0"),  # respaced, noise drawn into the static buffer
        (13, 0.0, True, True, "x0"),  # clamping inside the step
        # Ancestral, eps-prediction: x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) amplifies rounding by
        # up to 1/sqrt(ab) ~ 350, so this case uses an unpadded prompt (bit-equal attention).
        (None, 1.0, False, True, "eps"),
        # Self-conditioning (x0_hat carried in the static buffer) with given positions.
        (13, 0.0, False, True, "x0-selfcond-known"),
    ],
)
def test_graph_step_function_equals_plain_loop(
    tiny_model, monkeypatch, steps, eta, clamp, masked, prediction
):
    """The function the CUDA graph captures (DenoiseStep.step over static buffers, K/V padded to
    max_prompt_len), run eagerly in fp32 on CPU, reproduces the plain loop."""
    known = None
    if prediction == "x0-selfcond-known":
        prediction = "x0"
        from codefusion.config import preset
        from codefusion.pipeline import build_model

        torch.manual_seed(0)
        tiny_model.model = build_model(
            preset("tiny", code_len=16, self_condition=True), tiny_model.tokenizer
        ).eval()
        pos, ends = torch.arange(16)[None], torch.tensor([3, 5, 1, 15, 7, 2])[:, None]
        known = Known(pos >= ends, torch.where(pos == ends, 1, 0).long())
    m = tiny_model.model
    _perturb(m)
    m.config.prediction = prediction
    tiny_model.schedule.__init__(60)  # a short T keeps the all-steps case fast
    enc, mask = _inputs(m, prompt_len=7 if prediction == "x0" else m.config.max_prompt_len)
    mask = mask if masked else None
    seen = _record_decoded(monkeypatch)
    opts = SamplingOptions(steps=steps, eta=eta, clamp=clamp)
    kw = dict(trace_at={59, 30, 0}, known=known)
    a = sample(
        m, tiny_model.schedule, enc, mask, DRAWS, torch.Generator().manual_seed(3), opts, **kw
    )
    n_plain = len(seen)
    b = sample_graph(
        m,
        tiny_model.schedule,
        enc,
        mask,
        DRAWS,
        torch.Generator().manual_seed(3),
        opts,
        use_graph=False,
        dtype=None,
        compile_backend=None,
        **kw,
    )
    assert len(seen) == 2 * n_plain and n_plain >= 2  # the trace and the final decode
    for x_plain, x_fast in zip(seen[:n_plain], seen[n_plain:], strict=True):
        torch.testing.assert_close(x_fast, x_plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.scores, a.scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.tokens, b.tokens)
    assert [t for t, _ in a.trace] == [t for t, _ in b.trace]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a.trace, b.trace, strict=True))


def test_step_buffers_are_reused_and_rebuilt_when_weights_move(tiny_model):
    m = tiny_model.model
    _perturb(m)
    sched = tiny_model.schedule
    graph_mod._STEPS.pop(m, None)

    def run(prompt_len):
        enc, mask = _inputs(m, prompt_len)
        opts = SamplingOptions(steps=6, eta=0.3)
        fast = sample_graph(
            m,
            sched,
            enc,
            mask,
            DRAWS,
            torch.Generator().manual_seed(2),
            opts,
            use_graph=False,
            dtype=None,
            compile_backend=None,
        )
        plain = sample(m, sched, enc, mask, DRAWS, torch.Generator().manual_seed(2), opts)
        torch.testing.assert_close(fast.scores, plain.scores, atol=1e-5, rtol=1e-5)
        assert torch.equal(fast.tokens, plain.tokens)

    run(7)
    (first,) = graph_mod._STEPS[m].values()
    assert isinstance(first, DenoiseStep) and first.graph is None  # eager here: no CUDA
    assert first.cond.kv[0][0].shape[2] == 8  # the bucket of prompts of 5 to 8 tokens
    assert first.cond.kv[0][0].shape[0] == 3  # one row per prompt, not per draw
    run(5)  # another prompt length of the bucket: the same buffers
    assert list(graph_mod._STEPS[m].values()) == [first]
    with torch.no_grad():  # in-place update: the same buffers still read the new weights
        for p in m.denoiser.parameters():
            p.mul_(1.01)
    run(7)
    assert list(graph_mod._STEPS[m].values()) == [first]
    for p in m.denoiser.parameters():  # new storage: a graph would read stale addresses
        p.data = p.data.clone()
    run(7)
    assert len(graph_mod._STEPS[m]) == 2 and first in graph_mod._STEPS[m].values()


def _fast(m, sched, enc, mask, **kw):
    runner = dict(use_graph=False, dtype=None, compile_backend=None)
    runner.update(kw)
    gen = torch.Generator().manual_seed(2)
    return sample_graph(m, sched, enc, mask, DRAWS, gen, SamplingOptions(steps=6), **runner)


def _plain(m, sched, enc, mask):
    gen = torch.Generator().manual_seed(2)
    return sample(m, sched, enc, mask, DRAWS, gen, SamplingOptions(steps=6))


@pytest.mark.parametrize("prompt_len, padded", [(8, False), (7, False), (8, True), (20, False)])
def test_prompt_buckets_drop_the_mask_only_without_padding(tiny_model, prompt_len, padded):
    """K/V are padded to a power-of-two bucket; a step is unmasked (SDPA's flash kernel) only
    when neither the bucket nor the batch pads a key, and equals the plain loop either way."""
    m = tiny_model.model
    _perturb(m)
    graph_mod._STEPS.pop(m, None)
    enc, mask = _inputs(m, prompt_len)
    mask = mask if padded else None
    fast = _fast(m, tiny_model.schedule, enc, mask)
    plain = _plain(m, tiny_model.schedule, enc, mask)
    torch.testing.assert_close(fast.scores, plain.scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast.tokens, plain.tokens)
    (step,) = graph_mod._STEPS[m].values()
    bucket = prompt_bucket(prompt_len, m.config.max_prompt_len)
    assert step.cond.kv[0][0].shape[2] == bucket == {7: 8, 8: 8, 20: 32}[prompt_len]
    assert (step.cond.mask is None) == (not padded and bucket == prompt_len)


def test_pipeline_passes_no_mask_for_unpadded_prompts(tiny_model, monkeypatch):
    seen = []
    from codefusion import sampling

    real = sampling.sample

    def spy(model, schedule, enc, cross_mask, *a, **kw):
        seen.append(cross_mask)
        return real(model, schedule, enc, cross_mask, *a, **kw)

    monkeypatch.setattr("codefusion.pipeline.sample", spy)
    tiny_model.sample_draws(["cells greater than 5"], 2, steps=2)
    tiny_model.sample_draws(["cells greater than 5", "blank"], 2, steps=2)
    assert seen[0] is None and seen[1] is not None and seen[1].shape[0] == 2  # per prompt


def test_low_precision_copy_follows_the_weights_and_never_calls_n(tiny_model):
    """The fast path's bf16 N: a copy refreshed in place at every call (a graph reads it by
    address), rebuilt when the weights move; a compiled N's copy runs its own forward."""
    m = tiny_model.model
    _perturb(m)
    m.denoiser.compile(backend="eager")  # as training does (train/run.py: compile_model)
    a = graph_mod.low_precision_denoiser(m, torch.bfloat16)
    assert all(x._compiled_call_impl is None for x in a.modules())
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in a.parameters())
    with torch.no_grad():
        for p in m.denoiser.parameters():
            p.mul_(1.5)
    b = graph_mod.low_precision_denoiser(m, torch.bfloat16)
    assert b is a  # same storage: a captured graph stays valid
    for pa, pm in zip(a.parameters(), m.denoiser.parameters(), strict=True):
        assert torch.equal(pa, pm.bfloat16())
    for p in m.denoiser.parameters():
        p.data = p.data.clone()
    assert graph_mod.low_precision_denoiser(m, torch.bfloat16) is not a

    calls = []
    m.denoiser.register_forward_pre_hook(lambda *_: calls.append(1))
    enc, mask = _inputs(m)
    fast = _fast(m, tiny_model.schedule, enc, mask, dtype=torch.bfloat16)
    assert calls == []  # N itself never ran: its bf16 copy did, without autocast
    plain = _plain(m, tiny_model.schedule, enc, mask)
    torch.testing.assert_close(fast.scores, plain.scores, atol=0.05, rtol=0.05)


def test_compiled_step_traces_as_one_graph_and_equals_the_plain_loop(tiny_model):
    """The step is compiled before capture on CUDA (inductor); here dynamo traces it with the
    eager backend and fullgraph=True: no graph break (a break would leave eager islands in the
    captured step), and the same numbers."""
    torch._dynamo.reset()
    m = tiny_model.model
    _perturb(m)
    graph_mod._STEPS.pop(m, None)
    enc, mask = _inputs(m)
    fast = _fast(m, tiny_model.schedule, enc, mask, compile_backend="eager")
    (step,) = graph_mod._STEPS[m].values()
    assert step.compiled
    plain = _plain(m, tiny_model.schedule, enc, mask)
    torch.testing.assert_close(fast.scores, plain.scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast.tokens, plain.tokens)


def test_failed_capture_warns_but_is_an_error_when_strict(tiny_model, monkeypatch):
    """No CUDA here, so capturing fails: by default a warning and the eager step (correct,
    slow); under strict_graphs() or CODEFUSION_STRICT_GRAPHS=1 (benchmark, smoke check) an
    error, so that nobody times or passes the slow fallback unknowingly."""
    m = tiny_model.model
    _perturb(m)
    enc, mask = _inputs(m)
    graph_mod._STEPS.pop(m, None)
    with pytest.warns(UserWarning, match="CUDA graph capture failed"):
        fast = _fast(m, tiny_model.schedule, enc, mask, use_graph=True)
    assert torch.equal(fast.tokens, _plain(m, tiny_model.schedule, enc, mask).tokens)
    graph_mod._STEPS.pop(m, None)
    with graph_mod.strict_graphs(), pytest.raises(graph_mod.GraphCaptureError):
        _fast(m, tiny_model.schedule, enc, mask, use_graph=True)
    graph_mod._STEPS.pop(m, None)
    monkeypatch.setenv("CODEFUSION_STRICT_GRAPHS", "1")
    with pytest.raises(graph_mod.GraphCaptureError, match="capture"):
        _fast(m, tiny_model.schedule, enc, mask, use_graph=True)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_generate_fast_on_cpu_equals_plain(tiny_model, eta):
    _perturb(tiny_model.model)
    kw = dict(k=3, num_draws=4, steps=10, seed=7, eta=eta)
    fast = tiny_model.generate(["cells greater than 5", "blank"], fast=True, **kw)
    plain = tiny_model.generate(["cells greater than 5", "blank"], fast=False, **kw)
    default = tiny_model.generate(["cells greater than 5", "blank"], **kw)  # CPU: plain
    assert fast == plain == default


@pytest.mark.parametrize("name", ["tiny", "small"])
@pytest.mark.parametrize("self_cond_prob", [0.0, 1.0])
def test_analytic_training_flops_match_the_flop_counter(name, self_cond_prob):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from codefusion.config import preset
    from codefusion.diffusion import Batch, CodeFusionObjective
    from codefusion.flops import codefusion_flops, mfu
    from codefusion.model import CodeFusionModel
    from codefusion.schedule import SqrtSchedule

    torch.manual_seed(0)
    model = CodeFusionModel(preset(name, vocab_size=500))
    b, s, c = 4, 10, model.config.code_len
    lengths = torch.tensor([10, 7, 5, 9])  # padded prompts: the count assumes full ones
    prompt_mask = (torch.arange(s)[None] < lengths[:, None]).long()
    code = torch.randint(4, 500, (b, c))
    batch = Batch(torch.randint(4, 500, (b, s)), prompt_mask, code, torch.zeros(b, dtype=bool))
    sched = SqrtSchedule(model.config.diffusion_steps)
    objective = CodeFusionObjective(sched, self_cond_prob=self_cond_prob)
    # The math backend decomposes attention into matmuls that the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        objective(model, batch)["loss"].backward()
    analytic = codefusion_flops(model, b, s, self_cond_prob=self_cond_prob)["train_step"]
    assert analytic == pytest.approx(counter.get_total_flops(), rel=0.01)
    assert mfu(analytic, step_s=2.0, peak_flops=analytic) == pytest.approx(0.5)


def test_benchmark_quick_mode_writes_both_files(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, str(BENCH), "--quick", "--device", "cpu", "--preset", "tiny"]
    cmd += ["--vocab-size", "512", "--train-steps", "2", "--train-warmup", "1", "--threads", "1"]
    cmd += ["--sample-steps", "3", "--respaced", "2", "--repeats", "1", "--sample-warmup", "0"]
    cmd += ["--profile", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    env = res["environment"]
    for key in ("date", "command", "git_sha", "device_name", "torch", "triton", "python"):
        assert key in env
    assert env["device"] == "cpu" and "--quick" in env["command"]
    train = res["training"]
    for path in ("reference", "optimised"):
        assert train[path]["tokens_per_s"] > 0 and train[path]["achieved_tflops"] > 0
        assert train[path]["mfu"] is None  # CPU: no peak to compare with
    assert train["speedup"] > 0 and train["flops_per_step"] > 0
    assert train["reference"]["optimizer"].startswith("AdamW(fused=False)")
    prof = train["optimised"]["profile"]  # --profile: one step's time by op, summed and ranked
    assert 0 < prof["device_ms"] and 0 < prof["wall_ms"] and prof["top"]
    assert sorted((r["ms"] for r in prof["top"]), reverse=True) == [r["ms"] for r in prof["top"]]
    assert "Where the optimised training step's time goes" in (out / "results.md").read_text()
    assert train["optimised"]["optimizer"] == "AdamW(fused=True)"
    runs = res["sampling"]["runs"]
    assert [r["steps"] for r in runs] == [3, 2]
    for run in runs:
        assert run["reference"]["median_s"] > 0 and run["optimised"]["median_s"] > 0
        assert run["reference"]["options"] == {"fast": False, "cache_cross_kv": False}
        assert run["speedup"]["optimised"] > 0
    ops = res["op_counts"]
    train_ops, samp = ops["training"], ops["sampling"]
    before, now = train_ops["optimised, before"], train_ops["optimised, now"]
    assert now["dispatched"]["ops"] < before["dispatched"]["ops"]
    assert now["dispatched"]["host_reads"] < before["dispatched"]["host_reads"]
    ema_before = train_ops["optimised, before (EMA update alone)"]["dispatched"]
    ema_now = train_ops["optimised, now (EMA update alone)"]["dispatched"]
    assert ema_before["host_reads"] == 2 and ema_now["host_reads"] == 0
    assert ema_now["ops"] <= 2 < ema_before["ops"]  # a foreach lerp vs a loop over tensors
    fast_before = samp["fast step, before (fp32 N under autocast)"]["dispatched"]
    fast_now = samp["fast step, now (bf16 copy of N)"]["dispatched"]
    assert fast_now["ops"] < fast_before["ops"] and fast_now["casts"] < fast_before["casts"]
    assert fast_before["copies"] > 0 and fast_now["copies"] == 0
    assert res["memory"]["saved_mib_per_example"] > 0
    assert "Ops per step" in (out / "results.md").read_text()
    assert res["baseline"]["median_s"] > 0 and res["baseline"]["preset"] == "tiny"
    assert set(res["targets"]["met"]) == set(res["targets"]["targets"])
    assert res["targets"]["judged"] is False
    md = (out / "results.md").read_text()
    assert "| path |" in md and "x)" in md and env["git_sha"] in md
