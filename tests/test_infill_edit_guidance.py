"""Beyond the paper: infilling (given tokens kept), editing (SDEdit; strength -> 0 returns the
input) and classifier-free guidance (w = 1 is plain sampling; one 2N batch equals two passes),
the graph runner's step against the plain loop for each, and the CLI verbs' errors."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch

from bench.fixtures import CF_CODES
from codefusion.cli import main as cli
from codefusion.config import preset
from codefusion.errors import GenerationError
from codefusion.infill import parse_template
from codefusion.model import attention_mask
from codefusion.pipeline import CodeFusion, build_model
from codefusion.sampling import Known, SamplingOptions, ddim, loop, request, sample
from codefusion.sampling.graph import sample_graph


def _end_at(lengths: torch.Tensor, code_len: int, eos_id: int = 1, pad_id: int = 0) -> Known:
    """Given positions for draws of fixed lengths [N]: ``</s>`` at the length, pad after it."""
    pos = torch.arange(code_len)[None]
    ln = lengths[:, None]
    return Known(mask=pos >= ln, tokens=torch.where(pos == ln, eos_id, pad_id).long())


def _cf(tok, seed=0, **kw) -> CodeFusion:
    """A tiny model with random weights everywhere (the zero-initialised modulation would
    hide differences), T = 60 so that all-step runs are fast."""
    torch.manual_seed(seed)
    cf = CodeFusion(build_model(preset("tiny", code_len=16, **kw), tok), tok)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in cf.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    cf.schedule.__init__(60)
    return cf


# --- infilling ---------------------------------------------------------------------------------


def _random_template(rng: random.Random, tok) -> str:
    """A short CF program with one or two of its tokens replaced by holes of assorted kinds."""
    ids = tok.ids(rng.choice([c for c in CF_CODES if len(tok.ids(c)) <= 10]))
    holes = sorted(rng.sample(range(len(ids)), rng.randint(1, min(2, len(ids)))))
    text, prev = "", 0
    for h in holes:
        text += tok.hf.decode(ids[prev:h]) + rng.choice(
            ["<fill>", "<fill:1>", "<fill:2>", "<fill:1-3>"]
        )
        prev = h + 1
    return text + tok.hf.decode(ids[prev:])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("self_condition", [False, True])
def test_infilling_never_changes_a_given_token(tiny_tokenizer, seed, self_condition):
    cf = _cf(tiny_tokenizer, seed, self_condition=self_condition)
    rng = random.Random(seed)
    for _ in range(3):
        template = _random_template(rng, tiny_tokenizer)
        plan = cf.infill_plan(template, max_fill=3)
        out, layouts = cf.infill_draws(template, "cells", num_draws=6, seed=seed, steps=5)
        for row, lo in zip(out.tokens, layouts, strict=True):
            assert torch.equal(row[lo.given], lo.tokens[lo.given]), template
            stop = (row == cf.config.eos_id) | (row == cf.config.pad_id)
            assert not stop[lo.no_stop].any()  # a fixed-length hole holds code tokens
            # The decoded code is the template's pieces with the holes' text between them.
            pieces = [tiny_tokenizer.hf.decode(p) for p in plan.piece_ids]
            code = cf.tokenizer.decode(row.tolist())
            pos = 0
            for piece in pieces:
                found = code.find(piece.strip(), pos)
                assert found >= 0, (template, code, piece)
                pos = found + len(piece.strip())
        cands = cf.infill(template, "cells", k=3, max_fill=3, steps=5, seed=seed)
        assert 1 <= len(cands) <= 3
        assert all(len(c.fills) == len(plan.template.holes) for c in cands)


def test_given_positions_follow_the_forward_process(tiny_tokenizer, monkeypatch):
    """The measurement behind x̂0 replacement: after the first step every given position's x_t
    is q_sample(L(tok), t, ε) for one fixed ε (η = 0), as RePaint's re-noising would make it,
    while the free positions move."""
    cf = _cf(tiny_tokenizer, self_condition=True)
    m = cf.model
    xs = []
    real = loop.ddim_update

    def spy(x, *a, **k):
        xs.append(x.clone())
        return real(x, *a, **k)

    monkeypatch.setattr(loop, "ddim_update", spy)
    out, layouts = cf.infill_draws("GreaterThan(<fill:2>)", "cells", num_draws=3, steps=12)
    xs = list(zip(cf.schedule.timesteps(12), xs, strict=False))
    given = layouts[0].given
    emb = m.embed_code(layouts[0].tokens).detach()
    eps = [cf.schedule.eps_from_x0(x, torch.full((3,), t), emb) for t, x in xs[1:]]
    for e in eps[1:]:
        torch.testing.assert_close(e[:, given], eps[0][:, given], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(eps[-1][:, ~given], eps[0][:, ~given], atol=1e-2)


def test_infill_layout_and_lengths(tiny_tokenizer):
    cf = _cf(tiny_tokenizer)
    tok = cf.tokenizer
    plan = cf.infill_plan("GreaterThan(<fill>)", max_fill=4)
    assert plan.combinations == [(1,), (2,), (3,), (4,)]
    assert plan.default_draws(5) == 12  # each length equally often, at least 2k
    lo = plan.layout((2,))
    head, tail = tok.ids("GreaterThan("), tok.ids(")")
    n = len(head)
    assert lo.spans == ((n, n + 2),)
    assert lo.tokens[:n].tolist() == head and lo.tokens[n + 2 : n + 2 + len(tail)].tolist() == tail
    assert lo.tokens[n + 2 + len(tail)] == cf.config.eos_id and lo.given[n + 2 :].all()
    assert not lo.given[n : n + 2].any() and lo.no_stop[n : n + 2].all()
    # A template ending with <fill> is an open end: the model places the end token.
    t = cf.infill_plan("AND(<fill:2>, <fill>)").template
    assert [h.lengths for h in t.holes] == [(2,), (1, 2, 3, 4, 5, 6, 7, 8)] and not t.open_end
    t = cf.infill_plan("AND(<fill:2>, <fill>").template
    assert [h.lengths for h in t.holes] == [(2,), None] and t.open_end
    open_plan = cf.infill_plan("GreaterThan(<fill:1>) <fill>")
    assert open_plan.template.open_end and open_plan.combinations == [(1,)]
    lo = open_plan.layout((1,))
    assert lo.spans[-1][1] is None and not lo.given[lo.spans[-1][0] :].any()
    # Spaces before a hole are the hole's; after it they stay with the piece.
    t = parse_template("find . -name <fill> -delete")
    assert t.pieces == ("find . -name", " -delete")
    # Several holes: a bounded set of combinations, spread over the total length.
    many = cf.infill_plan("<fill>(<fill>, <fill>)")
    assert len(many.combinations) <= 32 and many.combinations[0] == (1, 1, 1)


@pytest.mark.parametrize(
    "template, message",
    [
        ("GreaterThan(5)", "has no hole"),
        ("GreaterThan(<fill:x>)", "unknown placeholder"),
        ("GreaterThan(<fill 3>)", "unknown placeholder"),
        ("GreaterThan(<FILL>)", "unknown placeholder"),
        ("GreaterThan(<fill:0>)", "at least 1 token"),
        ("GreaterThan(<fill:3-2>)", "at least 1 token"),
        ("GreaterThan(<fill:40>)", "longer than the canvas"),
        ("<fill:8>(<fill:8>)", "longer than the canvas"),
    ],
)
def test_bad_templates(tiny_tokenizer, template, message):
    cf = _cf(tiny_tokenizer)
    with pytest.raises(GenerationError, match=message):
        cf.infill(template, "cells", steps=2)


# --- editing -----------------------------------------------------------------------------------


def _rounding_decoder(monkeypatch, cf):
    """D the identity and H the dot product with L's table: D+H round L(y) back to y exactly
    (every L row has the same norm), as a D trained on clean L(y) does on the tokens it knows."""
    m = cf.model
    monkeypatch.setattr(m, "decode", lambda x0, kv, mask: x0)
    monkeypatch.setattr(m, "logits", lambda h: h @ m.code_table().T)


@pytest.mark.parametrize("fast", [False, True])
def test_strength_to_zero_returns_the_input(tiny_tokenizer, monkeypatch, fast):
    cf = _cf(tiny_tokenizer, self_condition=True)
    _rounding_decoder(monkeypatch, cf)
    codes = ["GreaterThan(5)", "LessThan(80)", "Blanks()"]
    calls = []
    monkeypatch.setattr(cf.model.denoiser, "forward", lambda *a, **k: calls.append(1))
    if fast:  # the graph runner's logic, eagerly on CPU

        def via_graph(*args):
            return sample_graph(*args, use_graph=False, dtype=None, compile_backend=None)

        monkeypatch.setattr("codefusion.pipeline.sample", via_graph)
    for s in (1e-9, 1e-4, 0.4 / (cf.schedule.steps - 1)):  # t0 = round(s (T - 1)) = 0
        out = cf.edit(codes, ["cells"] * 3, strength=s, k=2, num_draws=3, steps=10)
        assert [c[0].code for c in out] == codes and all(len(c) == 1 for c in out)
    assert not calls  # t0 = 0: no denoising step runs


def test_edit_at_t0_zero_decodes_l_of_the_code(tiny_tokenizer):
    """Without any help: t0 = 0 gives D+H of L(code), whatever D has learnt."""
    cf = _cf(tiny_tokenizer)
    m, code = cf.model, "LessThan(10)"
    out = cf.edit_draws(code, "values", num_draws=2, strength=1e-6, steps=5)
    ids, _ = cf.tokenizer.encode_code([code], m.config.code_len)
    enc = m.encode(*cf.encode_prompts(["values"]))
    x0 = m.embed_code(ids)
    want = m.logits(m.decode(x0, m.decoder.cross_kv(enc), None)).argmax(-1)
    assert torch.equal(out.tokens, want.repeat(2, 1)) and out.trace == []


def test_edit_plan_starts_at_t0(tiny_tokenizer):
    cf = _cf(tiny_tokenizer)
    opts = SamplingOptions(steps=10, strength=0.5)
    plan = ddim.StepPlan.for_options(cf.schedule, opts)
    t0 = round(0.5 * 59)
    assert plan.ts[0] == t0 and plan.ts[1:] == [t for t in cf.schedule.timesteps(10) if t < t0]
    assert ddim.StepPlan.for_options(cf.schedule, SamplingOptions(strength=1.0)).ts == list(
        range(59, -1, -1)
    )
    assert len(ddim.StepPlan.for_options(cf.schedule, SamplingOptions(strength=1e-3))) == 0
    # The run starts from q_sample(L(code), t0, eps) with the eps that x_T would have been.
    ids = cf.tokenizer.encode_code(["Between(1, 9)", "Blanks()"], 16)[0]
    enc, _ = _batch(cf.model, n=2)
    prep = request.prepare(
        cf.model, cf.schedule, enc, None, 1, torch.Generator().manual_seed(7), opts, start=ids
    )
    eps = torch.randn(prep.x.shape, generator=torch.Generator().manual_seed(7))
    x0 = cf.model.embed_code(ids)
    want = cf.schedule.q_sample(x0, torch.full((2,), t0), eps)
    torch.testing.assert_close(prep.x, want)


@pytest.mark.parametrize("strength", [0, 0.0, -0.1, 1.5, float("nan"), True])
def test_strength_outside_the_range_is_an_error(tiny_tokenizer, strength):
    cf = _cf(tiny_tokenizer)
    with pytest.raises(GenerationError, match="strength must lie in"):
        cf.edit("GreaterThan(5)", "cells", strength=strength, steps=2)


def test_edit_errors(tiny_tokenizer):
    cf = _cf(tiny_tokenizer)
    with pytest.raises(GenerationError, match="longer than the model's canvas"):
        cf.edit("GreaterThan(5) " * 10, "cells", strength=0.5, steps=2)
    with pytest.raises(GenerationError, match="nothing to edit"):
        cf.edit("  ", "cells", strength=0.5, steps=2)
    with pytest.raises(GenerationError, match="option of an edit"):
        cf.generate("cells", steps=2, strength=0.5)
    with pytest.raises(GenerationError, match="2 programs to edit but 1 prompts"):
        cf.edit(["a", "b"], ["x"], strength=0.5, steps=2)


# --- guidance ----------------------------------------------------------------------------------


def _batch(m, n=4, s=6):
    enc = torch.randn(n, s, m.encoder_dim, generator=torch.Generator().manual_seed(5))
    rows = [[1] * s, [1] * 3 + [0] * (s - 3)] * (n // 2)
    return enc, attention_mask(torch.tensor(rows))


@pytest.mark.parametrize("self_condition", [False, True])
def test_guidance_one_is_plain_sampling_and_runs_no_second_half(
    tiny_tokenizer, monkeypatch, self_condition
):
    cf = _cf(tiny_tokenizer, self_condition=self_condition)
    m = cf.model
    enc, mask = _batch(m)
    rows = []
    real = m.denoiser.forward
    monkeypatch.setattr(m.denoiser, "forward", lambda x, *a: rows.append(x.shape[0]) or real(x, *a))
    a = sample(
        m, cf.schedule, enc, mask, 3, torch.Generator().manual_seed(2), SamplingOptions(steps=6)
    )
    b = sample(
        m, cf.schedule, enc, mask, 3, torch.Generator().manual_seed(2),
        SamplingOptions(steps=6, guidance=1.0),
    )  # fmt: skip
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.scores, b.scores)
    assert set(rows) == {12}  # 4 prompts x 3 draws
    rows.clear()
    sample(
        m, cf.schedule, enc, mask, 3, torch.Generator().manual_seed(2),
        SamplingOptions(steps=6, guidance=2.0),
    )  # fmt: skip
    assert set(rows) == {24}  # one batched pass of 2N rows per step


def _two_pass_reference(m, schedule, enc, mask, draws, gen, w, steps):
    """Guidance by two separate passes of N per step on every draw, with E(s) and ξ repeated
    per draw (no K/V shared between draws), combined in x0 space."""
    n = enc.shape[0] * draws
    x = torch.randn(n, m.config.code_len, m.config.latent_dim, generator=gen)
    xi = torch.randn(enc.shape, generator=gen)
    rep = lambda a: a.repeat_interleave(draws, 0)  # noqa: E731
    kv_c, kv_u = m.denoiser.cross_kv(rep(enc)), m.denoiser.cross_kv(rep(xi))
    mask = rep(mask)
    plan = ddim.StepPlan.build(schedule, schedule.timesteps(steps), 0.0)
    prev_c = prev_u = torch.zeros_like(x) if m.config.self_condition else None
    for i in range(len(plan)):
        t, c = plan.t[i].expand(n), plan.coef_at(i)
        x0_c = m.denoise(x, t, kv_c, mask, prev_c)
        x0_u = m.denoise(x, t, kv_u, None, prev_u)
        x0 = x0_u + w * (x0_c - x0_u)
        prev_c, prev_u = x0_c, x0_u  # each half reads its own estimate
        eps = (x - c.sqrt_ab * x0) / c.sqrt_1m_ab
        x = x0 if i == len(plan) - 1 else c.sqrt_ab_prev * x0 + c.c_eps * eps
    return x


@pytest.mark.parametrize("w", [0.0, 2.5])
def test_batched_guidance_equals_two_passes(tiny_tokenizer, monkeypatch, w):
    cf = _cf(tiny_tokenizer, self_condition=True)
    m = cf.model
    enc, mask = _batch(m)
    seen = []
    real = loop.decode_tokens
    monkeypatch.setattr(
        loop, "decode_tokens", lambda model, x0, *a: seen.append(x0.clone()) or real(model, x0, *a)
    )
    opts = SamplingOptions(steps=7, guidance=w)
    sample(m, cf.schedule, enc, mask, 3, torch.Generator().manual_seed(4), opts)
    want = _two_pass_reference(m, cf.schedule, enc, mask, 3, torch.Generator().manual_seed(4), w, 7)
    torch.testing.assert_close(seen[-1], want, atol=1e-5, rtol=1e-5)


def test_guidance_option_errors(tiny_tokenizer):
    cf = _cf(tiny_tokenizer)
    for bad in (float("inf"), "2", None):
        with pytest.raises(GenerationError, match="guidance must be a finite number"):
            cf.generate("x", steps=2, guidance=bad)


# --- the graph runner's step against the plain loop ----------------------------------------------


@pytest.mark.parametrize(
    "options, with_start, with_known",
    [
        (dict(steps=9, guidance=2.0), False, False),
        (dict(steps=9, guidance=0.5, eta=0.5), False, True),
        (dict(steps=9, guidance=3.0, clamp=True), False, True),
        (dict(steps=12, strength=0.4), True, False),
        (dict(steps=12, strength=0.7, guidance=1.5, eta=1.0), True, False),
        (dict(steps=12, strength=1e-4), True, False),  # t0 = 0: no step at all
    ],
)
def test_graph_path_equals_plain_loop_for_guidance_and_edits(
    tiny_tokenizer, options, with_start, with_known
):
    cf = _cf(tiny_tokenizer, self_condition=True)
    m = cf.model
    enc, mask = _batch(m)
    opts = SamplingOptions(**options)
    start = None
    if with_start:  # 4 prompts x 2 draws
        start = cf.tokenizer.encode_code(CF_CODES[:4], 16)[0].repeat_interleave(2, 0)
    known = _end_at(torch.tensor([3, 5, 1, 15, 2, 4, 6, 8]), 16) if with_known else None
    kw = dict(known=known, trace_at={59, 30, 0}, start=start)
    a = sample(m, cf.schedule, enc, mask, 2, torch.Generator().manual_seed(3), opts, **kw)
    b = sample_graph(
        m, cf.schedule, enc, mask, 2, torch.Generator().manual_seed(3), opts,
        use_graph=False, dtype=None, compile_backend=None, **kw,
    )  # fmt: skip
    torch.testing.assert_close(b.scores, a.scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.tokens, b.tokens)
    assert [t for t, _ in a.trace] == [t for t, _ in b.trace]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a.trace, b.trace, strict=True))


@pytest.mark.parametrize(
    "options, with_start, with_known",
    [
        (dict(steps=6, guidance=2.0), False, True),
        (dict(steps=6, guidance=1.5, eta=0.5), False, False),
        (dict(steps=12, strength=0.5, guidance=2.0), True, False),
    ],
)
def test_compiled_guided_and_edit_steps_trace_as_one_graph(
    tiny_tokenizer, options, with_start, with_known
):
    """The compiled step (dynamo with the eager backend, fullgraph=True, as inductor gets it on
    CUDA) of guidance and edits: no graph break, and the plain loop's numbers."""
    from codefusion.sampling import graph as graph_mod

    torch._dynamo.reset()
    cf = _cf(tiny_tokenizer, self_condition=True)
    m = cf.model
    graph_mod._STEPS.pop(m, None)
    enc, mask = _batch(m)
    opts = SamplingOptions(**options)
    start = cf.tokenizer.encode_code(CF_CODES[:4], 16)[0] if with_start else None
    known = _end_at(torch.tensor([3, 5, 1, 15]), 16) if with_known else None
    a = sample(
        m, cf.schedule, enc, mask, 1, torch.Generator().manual_seed(3), opts, known, None, start
    )
    with graph_mod.strict_graphs():  # a graph break is an error, not an eager fallback
        b = sample_graph(
            m, cf.schedule, enc, mask, 1, torch.Generator().manual_seed(3), opts, known, None,
            start, use_graph=False, dtype=None, compile_backend="eager",
        )  # fmt: skip
    (step,) = graph_mod._STEPS[m].values()
    assert step.compiled
    torch.testing.assert_close(b.scores, a.scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.tokens, b.tokens)


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture()
def model_dir(tiny_tokenizer, tmp_path):
    _cf(tiny_tokenizer).save_pretrained(tmp_path / "m")
    return str(tmp_path / "m")


def test_cli_infill_and_edit(model_dir, capsys):
    assert cli(["infill", "--model", model_dir, "--steps", "4", "--k", "2", "--json",
                "--show-steps", "GreaterThan(<fill:2>)", "cells"]) == 0  # fmt: skip
    cap = capsys.readouterr()
    (out,) = json.loads(cap.out)
    assert out["template"] == "GreaterThan(<fill:2>)" and 1 <= len(out["candidates"]) <= 2
    assert all(c["code"].startswith("GreaterThan(") for c in out["candidates"])
    assert "t=" in cap.err
    assert cli(["edit", "--model", model_dir, "--steps", "8", "--strength", "0.5",
                "--show-steps", "--seed", "1", "GreaterThan(5)", "cells"]) == 0  # fmt: skip
    cap = capsys.readouterr()
    assert cap.out.startswith("1. [") and "editing from t0 = " in cap.err
    assert cli(["generate", "--model", model_dir, "--steps", "3", "--guidance", "2", "x"]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["infill", "GreaterThan(5)", "x"], "error: the template has no hole"),
        (["infill", "GreaterThan(<fill:x>)", "x"], "error: unknown placeholder '<fill:x>'"),
        (["infill", "GreaterThan(<fill:99>)", "x"], "longer than the canvas allows"),
        (["edit", "--strength", "0", "GreaterThan(5)", "x"], "error: strength must lie in (0, 1]"),
        (["edit", "--strength", "1.01", "GreaterThan(5)", "x"], "error: strength must lie in"),
        (["edit", "GreaterThan(5) " * 10, "x"], "longer than the model's canvas"),
        (["generate", "--guidance", "inf", "x"], "error: guidance must be a finite number"),
    ],
)
def test_cli_errors_are_one_line(model_dir, argv, message):
    argv = [argv[0], "--model", model_dir, "--steps", "2", *argv[1:]]
    r = subprocess.run(
        [sys.executable, "-m", "codefusion.cli", *argv], capture_output=True, text=True
    )
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("verb", ["infill", "edit", "generate"])
def test_cli_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        cli([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--show-steps", "--k", "--seed", "--steps", "--json", "--guidance"):
        assert flag in out
    if verb == "edit":
        assert "--strength" in out
