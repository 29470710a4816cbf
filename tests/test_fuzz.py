"""Fuzz / property tests of every entry point that takes outside text: each one answers with a
result or its own documented error, never anything else (CF rules also within a time limit).

Every test states its ``max_examples``: at least 1,000 for each parser and entry point (CF
rules, Bash commands, config overrides, prompts, infill templates, benchmark JSON), fewer for
the full generation call, which runs a model.
"""

from __future__ import annotations

import json
import random
import string
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.fixtures import CF_CODES, CF_PROMPTS
from codefusion import cfrules
from codefusion.data import DataError, Example, LoadReport, load_benchmark
from codefusion.errors import GenerationError
from codefusion.languages import LANGUAGES, is_valid, mask_code, maskable_spans
from codefusion.pipeline import Candidate
from codefusion.scoring.metrics import bash as bash_metric
from codefusion.scoring.metrics.cf_interpreter import execute

FAST = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIME_LIMIT_S = 2.0  # per example: generous for a loaded 2-core machine, tiny for a hang

# --- text strategies -------------------------------------------------------------------------

control_text = st.text(alphabet=st.characters(max_codepoint=0x1F) | st.sampled_from("\x7f\x85"))
other_scripts = st.text(
    alphabet=st.characters(
        whitelist_categories=("L", "M", "N", "P", "S", "Zs", "Cf"), min_codepoint=0x370
    ),
    max_size=60,
)
replaced_bytes = st.binary(max_size=80).map(lambda b: b.decode("utf-8", errors="replace"))
# Longer than any prompt window or canvas; the bashlex-based scanners are linear but slow (~30 µs
# a character), so the 200K-character prompt is one explicit example of the generate test only.
huge = st.builds(lambda s, n: (s or "x") * n, st.text(max_size=8), st.integers(300, 1000))
any_text = st.one_of(
    st.just(""),
    st.text(max_size=80),
    control_text,
    other_scripts,
    replaced_bytes,
    huge,
)


def _bounded(fn, *args):
    """Call ``fn``; return (result or exception, seconds). Only Exception is caught."""
    t0 = time.perf_counter()
    try:
        out = fn(*args)
    except Exception as e:  # the test decides which errors are allowed
        out = e
    return out, time.perf_counter() - t0


# --- CodeFusion.generate -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cf_model(tiny_tokenizer):
    from codefusion.config import preset
    from codefusion.pipeline import CodeFusion, build_model

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add contention on a busy machine
    yield CodeFusion(build_model(preset("tiny", code_len=16), tiny_tokenizer), tiny_tokenizer)
    torch.set_num_threads(threads)


@settings(max_examples=60, **FAST)
@given(prompt=any_text, allow_empty=st.booleans())
@example(prompt="Highlight " * 20_000, allow_empty=False)  # 200K characters
def test_generate_gives_candidates_or_a_generation_error(cf_model, prompt, allow_empty):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long prompts warn that they were truncated
        out, _ = _bounded(
            lambda: cf_model.generate(prompt, k=1, num_draws=1, steps=1, allow_empty=allow_empty)
        )
    if isinstance(out, Exception):
        assert isinstance(out, GenerationError), repr(out)
        visible = "".join(
            ch for ch in prompt if ch in "\t\n" or not (ch < " " or "\x7f" <= ch <= "\x9f")
        )
        assert not visible.strip() and not allow_empty  # empty once control characters go
    else:
        assert len(out) == 1 and isinstance(out[0], Candidate) and isinstance(out[0].code, str)


@settings(max_examples=20, **FAST)
@given(prompts=st.lists(any_text, max_size=3), k=st.integers(-1, 3), draws=st.integers(0, 3))
def test_generate_batches_and_bad_arguments(cf_model, prompts, k, draws):
    out, _ = _bounded(lambda: cf_model.generate(prompts, k=k, num_draws=draws, steps=1))
    if isinstance(out, Exception):
        assert isinstance(out, GenerationError), repr(out)
    else:
        assert len(out) == len(prompts) and all(1 <= len(c) <= k for c in out)


def test_generate_rejects_surrogateescape_text(cf_model):
    prompt = b"cells \xff\xfe greater".decode("utf-8", errors="surrogateescape")
    with pytest.raises(GenerationError):
        cf_model.generate(prompt, k=1, num_draws=1, steps=1)


# --- load_benchmark ----------------------------------------------------------------------------

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_scalar,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=8,
)
table = st.lists(st.lists(json_scalar, max_size=3), max_size=4)
FIELDS = ["ID", "NL Utterance", "Code", "Data", "Labels"]
plausible_row = st.fixed_dictionaries(
    {},
    optional={
        "ID": st.integers(0, 10**6) | json_value,
        "NL Utterance": st.sampled_from(CF_PROMPTS) | st.none() | any_text | json_value,
        "Code": st.sampled_from(CF_CODES + ["ls -la", "x + 1"]) | st.none() | any_text,
        "Data": table | json_value,
        "Labels": st.lists(st.integers(0, 5), max_size=3) | json_value,
        "Extra": json_value,
    },
)
row = plausible_row | json_value
document = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "train": st.lists(row, max_size=5) | json_value,
            "test": st.lists(row, max_size=5),
        },
    ),
    json_value,
)


@st.composite
def dataset_file(draw) -> bytes:
    raw = json.dumps(draw(document)).encode()
    kind = draw(st.sampled_from(["whole", "truncated", "garbage", "bad-utf8"]))
    if kind == "truncated":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if kind == "garbage":
        return draw(st.binary(max_size=60))
    if kind == "bad-utf8":
        cut = draw(st.integers(0, len(raw)))
        return raw[:cut] + b"\xff\xc3" + raw[cut:]
    return raw


@settings(max_examples=1000, **FAST)
@given(
    content=dataset_file(),
    lang=st.sampled_from(sorted(LANGUAGES)),
    split=st.sampled_from(["train", "test"]),
)
def test_load_benchmark_gives_results_or_a_data_error(content, lang, split):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "benchmarks").mkdir()
        (Path(d) / "benchmarks" / LANGUAGES[lang].benchmark_file).write_bytes(content)
        out, _ = _bounded(load_benchmark, lang, split, d)
    if isinstance(out, Exception):
        assert isinstance(out, DataError), repr(out)
        assert LANGUAGES[lang].benchmark_file in str(out) and "\n" not in str(out)
        return
    examples, report = out
    assert isinstance(report, LoadReport) and report.kept == len(examples)
    for ex in examples:
        assert isinstance(ex, Example) and isinstance(ex.prompt, str) and isinstance(ex.code, str)
        if split == "train":
            assert ex.prompt and ex.code


def test_load_benchmark_deeply_nested_json_is_a_data_error(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / LANGUAGES["cf"].benchmark_file).write_text("[" * 100_000)
    with pytest.raises(DataError):
        load_benchmark("cf", "train", tmp_path)


# --- CF rules ----------------------------------------------------------------------------------

CF_PIECES = [
    "AND(",
    "OR(",
    "NOT(",
    "GreaterThan(",
    "LessThan(",
    "Between(",
    "TextContains(",
    "Equals(",
    "Top(",
    "Bottom(",
    "Duplicate(",
    "Blanks(",
    "LEN(",
    "c[0]",
    "c[1]",
    "c[99999]",
    ", ",
    ")",
    "(",
    "'",
    '"',
    "5",
    "-3.5",
    "10%",
    "1e308",
    "2023-01-31",
    "abc",
    " ",
    "[",
    "]",
]
cf_like = st.lists(st.sampled_from(CF_PIECES), max_size=40).map("".join)
cf_text = st.one_of(cf_like, st.text(max_size=60), control_text, huge)
cf_table = st.one_of(
    st.just([["Index", "Value"], [0, "3"], [1, "7"], [2, "abc"], [3, ""], [4, "12"]]),
    st.lists(st.lists(json_scalar, max_size=4), max_size=5),
)


@settings(max_examples=1000, **FAST)
@given(text=cf_text, data=cf_table)
def test_cfrules_parse_and_execute_answer_or_raise_cferror_in_bounded_time(text, data):
    parsed, dt = _bounded(cfrules.parse, text)
    assert dt < TIME_LIMIT_S, f"parse took {dt:.2f}s"
    if isinstance(parsed, Exception):
        assert isinstance(parsed, cfrules.CFError), repr(parsed)
        assert cfrules.is_valid(text) is False
    else:
        assert cfrules.is_valid(text) is True
    cells, dt = _bounded(execute, text, data)
    assert dt < TIME_LIMIT_S, f"execute took {dt:.2f}s"
    if isinstance(cells, Exception):
        assert isinstance(cells, cfrules.CFError), repr(cells)
    else:
        assert isinstance(cells, frozenset)
        assert all(1 <= r < len(data) for r, _ in cells)


# --- Bash template -----------------------------------------------------------------------------

SHELL_PIECES = [
    "ls",
    "find",
    "xargs",
    "grep",
    "sudo",
    "-la",
    "-exec",
    "-I",
    "{}",
    "\\;",
    "+",
    "|",
    "&&",
    "||",
    ";",
    "&",
    "$(",
    "`",
    ")",
    "(",
    "{",
    "}",
    "<(",
    ">",
    "2>&1",
    "<<EOF\n",
    "EOF",
    "'",
    '"',
    "$x",
    "~",
    "for i in a; do",
    "done",
    "if",
    "then",
    "fi",
    "\n",
    " ",
    "*.py",
    "--",
    "=",
]
shell_like = st.lists(st.sampled_from(SHELL_PIECES), max_size=30).map(" ".join)


@settings(max_examples=1000, **FAST)
@given(cmd=st.one_of(shell_like, any_text), other=shell_like)
def test_bash_template_returns_str_or_none_and_never_raises(cmd, other):
    out = bash_metric.template(cmd)
    assert out is None or isinstance(out, str)
    ok, by = bash_metric.template_match(cmd, other)
    assert isinstance(ok, bool) and by in ("template", "string")
    assert isinstance(is_valid(cmd, "bash"), bool)


# --- masking -----------------------------------------------------------------------------------

code_text = st.one_of(
    any_text, cf_like, shell_like, st.text(alphabet=string.printable, max_size=80)
)


@settings(max_examples=1000, **FAST)
@given(
    code=code_text,
    lang=st.sampled_from(sorted(LANGUAGES)),
    rate=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
)
def test_mask_code_never_raises_on_text(code, lang, rate, seed):
    out = mask_code(code, lang, rate, random.Random(seed), "<mask>")
    assert isinstance(out, str)
    assert out == mask_code(code, lang, rate, random.Random(seed), "<mask>")  # deterministic
    spans = maskable_spans(code, lang)
    assert all(0 <= a < b <= len(code) for a, b in spans)
    if rate == 0 or not spans:
        assert out == code
    else:
        assert "<mask>" in out


# --- config overrides --------------------------------------------------------------------------

_KEYS = [
    "seed",
    "name",
    "language",
    "pretrain.lr",
    "pretrain.max_steps",
    "finetune.batch_size",
    "finetune.val_fraction",
    "pretrain.mask_rate",
    "finetune.ema_decay",
    "tokenizer.vocab_size",
    "tokenizer.scheme",
    "model.code_len",
    "model.dropout",
    "model.preset",
    "finetune.on_nan",
    "model.prediction",
    "finetune.min_t",
    "pretrain",
    "model",
    "nonsense",
    "finetune.nonsense",
]
_VALUES = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["abc", "[1, 2]", "{a: 1}", "null", "true", "''", "x0", "cf", "1e-3", "- ["]),
    st.text(max_size=20),
)


@settings(max_examples=1000, **FAST)
@given(overrides=st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), min_size=1, max_size=3))
def test_config_overrides_give_a_config_or_a_one_line_error(overrides):
    """Any --set KEY=VALUE: a config, or a RunConfigError of one line (no raw Python error)."""
    from train.config import RunConfig, RunConfigError, load_run_config

    items = [f"{k}={v}" for k, v in overrides]
    out, _ = _bounded(load_run_config, "configs/cf-tiny.yaml", items)
    if isinstance(out, Exception):
        assert isinstance(out, RunConfigError), (items, repr(out))
        assert "\n" not in str(out) and str(out)
    else:
        assert isinstance(out, RunConfig)


# --- prompts and infill templates --------------------------------------------------------------


@settings(max_examples=1000, **FAST)
@given(prompt=any_text, allow_empty=st.booleans())
def test_prompts_are_checked_and_encoded_or_refused_in_one_line(
    tiny_tokenizer, prompt, allow_empty
):
    """The request checks and the encoding every generate call makes (the model's own step is
    the generate test's above, with fewer examples)."""
    import warnings

    from codefusion.generator import check_prompts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, _ = _bounded(check_prompts, [prompt], allow_empty)
    if isinstance(out, Exception):
        assert isinstance(out, GenerationError) and "\n" not in str(out), repr(out)
        return
    ids, mask, _ = tiny_tokenizer.encode_prompts(out, 48)
    assert ids.shape == mask.shape and ids.shape[1] <= 48 and int(mask.sum()) >= 1
    assert not any(ch < " " and ch not in "\t\n" for ch in out[0])


template_text = st.one_of(
    any_text,
    st.builds(
        lambda a, hole, b: a + hole + b,
        st.text(max_size=20),
        st.sampled_from(
            [
                "<fill>",
                "<fill:2>",
                "<fill:1-3>",
                "<fill:0>",
                "<fill:x>",
                "<FILL>",
                "<fill",
                "<fill:9-2>",
                "<fill:40>",
                "<fill:>",
            ]
        ),
        st.text(max_size=20),
    ),
)


@settings(max_examples=1000, **FAST)
@given(template=template_text, max_fill=st.integers(-1, 10))
def test_infill_templates_lay_out_or_refuse_in_one_line(tiny_tokenizer, template, max_fill):
    from codefusion.infill import InfillPlan, parse_template

    def plan():
        t = parse_template(template, max_fill)
        return InfillPlan(t, tiny_tokenizer.ids, 16, tiny_tokenizer.eos_id, tiny_tokenizer.pad_id)

    out, seconds = _bounded(plan)
    assert seconds < TIME_LIMIT_S
    if isinstance(out, Exception):
        assert isinstance(out, GenerationError) and "\n" not in str(out), repr(out)
        return
    known, layouts = out.draws(3)
    assert known.mask.shape == (3, 16) and len(layouts) == 3
