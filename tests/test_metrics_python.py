"""Tests for the Python metrics (eval/metrics/python.py), incl. CodeBERTScore on a tiny model."""

from __future__ import annotations

import ast
import functools
import json
import random
from pathlib import Path

import pytest

from codefusion import languages
from codefusion.scoring.metrics.python import (
    CodeBERTScorer,
    bleu4,
    chrf,
    conala_tokenize,
    exact_match,
    normalise,
    sentence_bleu4,
)

is_valid = functools.partial(languages.is_valid, name="python")

# --------------------------------------------------------------------------- normalisation


def test_normalise_uses_ast_dump() -> None:
    assert normalise("x=1") == ast.dump(ast.parse("x = 1"))
    assert exact_match("f(a,b)", "f(a, b)")
    assert exact_match("x = 1  # comment", "x=1\n")
    assert exact_match("print('a')", 'print("a")')
    assert not exact_match("f(a, b)", "f(b, a)")


def test_normalise_falls_back_to_whitespace() -> None:
    assert normalise("f(a,  \n b") == "f(a, b"
    assert exact_match("for x in", "for  x\tin")
    assert not exact_match("for x in", "for x")


def test_is_valid() -> None:
    assert is_valid("os.kill(os.getpid(), signal.SIGUSR1)")
    assert is_valid("  x = 1\n")  # surrounding whitespace is stripped
    assert not is_valid("f(a,")
    assert not is_valid("x\x00")


# --------------------------------------------------------------------------- tokenisation


def test_conala_tokenize_splits_non_identifier_characters() -> None:
    assert conala_tokenize("os.path.join(a, b_c)") == [
        "os",
        ".",
        "path",
        ".",
        "join",
        "(",
        "a",
        ",",
        "b_c",
        ")",
    ]
    assert conala_tokenize("x+=1") == ["x", "+", "=", "1"]


def test_conala_tokenize_splits_camel_case() -> None:
    assert conala_tokenize("myList[0]") == ["my", "List", "[", "0", "]"]
    assert conala_tokenize("getElementById") == ["get", "Element", "By", "Id"]
    assert conala_tokenize("HTTPServer") == ["HTTPServer"]  # only lower->upper boundaries


def test_conala_tokenize_unifies_quotes() -> None:
    assert conala_tokenize("'a'") == conala_tokenize('"a"') == ["`", "a", "`"]
    assert conala_tokenize("print('%s' % x)") == ["print", "(", "`", "%", "s", "`", "%", "x", ")"]


# --------------------------------------------------------------------------- BLEU / chrF


def test_bleu_identical_is_100() -> None:
    codes = ["sorted(d.items(), key=lambda x: x[1])", "os.kill(os.getpid(), signal.SIGUSR1)"]
    assert bleu4(codes, codes) == pytest.approx(100.0)
    assert bleu4(["print('hello world')"], ['print("hello world")']) == pytest.approx(100.0)
    assert sentence_bleu4(codes[0], codes[0]) == pytest.approx(100.0)


def test_bleu_disjoint_is_near_zero() -> None:
    preds = ["alpha beta gamma delta epsilon", "zeta eta theta iota kappa"]
    refs = ["one two three four five", "six seven eight nine ten"]
    assert bleu4(preds, refs) < 1.0
    assert sentence_bleu4(preds[0], refs[0]) < 1.0


def test_bleu_partial_and_errors() -> None:
    ref = "df.sort_values(by='col', ascending=False)"
    pred = "df.sort_values(by='col')"
    assert 0.0 < sentence_bleu4(pred, ref) < 100.0
    assert 0.0 < bleu4([pred], [ref]) < 100.0
    assert bleu4([], []) == 0.0
    with pytest.raises(ValueError):
        bleu4(["a"], [])


def test_chrf() -> None:
    codes = ["os.path.join(a, b)", "x.split(',')"]
    assert chrf(codes, codes) == pytest.approx(100.0)
    assert chrf(["qqqq zzzz"], ["abcd efgh"]) < 5.0
    assert 0.0 < chrf(["os.path.join(a, c)"], ["os.path.join(a, b)"]) < 100.0
    assert chrf([], []) == 0.0
    with pytest.raises(ValueError):
        chrf(["a"], ["a", "b"])


# --------------------------------------------------------------------------- CodeBERTScore

_TRAIN_TEXTS = [
    "def foo(x): return x + 1",
    "print('hello world')",
    "import os\nos.path.join(a, b)",
    "sorted(d.items(), key=lambda x: x[1])",
    "[x for x in my_list if x > 0]",
    "df.groupby('a').sum()",
]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised RoBERTa with a byte-level BPE trained on a few strings."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _TRAIN_TEXTS * 3,
        vocab_size=300,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    inner = bpe._tokenizer
    inner.post_processor = RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>"))
    )
    tok = RobertaTokenizerFast(
        tokenizer_object=inner,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    out = tmp_path_factory.mktemp("tiny_roberta")
    tok.save_pretrained(str(out))
    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    RobertaModel(cfg).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def scorer(tiny_model_dir: Path) -> CodeBERTScorer:
    return CodeBERTScorer(str(tiny_model_dir), layer=11)


def test_codebertscore_identical_is_one(scorer: CodeBERTScorer) -> None:
    codes = _TRAIN_TEXTS + ["x ** 0.5", "math.sqrt(x)"]
    res = scorer.score(codes, list(codes))
    for key in ("precision", "recall", "f1", "f3"):
        assert len(res[key]) == len(codes)
        for v in res[key]:
            assert v == pytest.approx(1.0, abs=1e-5), key


def test_codebertscore_range_and_determinism(tiny_model_dir: Path, scorer: CodeBERTScorer) -> None:
    preds = ["x ** 0.5", "print('hi')", "a.b(c)", "", "()", "for i in range(10): pass"]
    refs = ["math.sqrt(x)", "os.path.join(a, b)", "a.b(c, d)", "x = 1", "()", "sorted(y)"]
    first = scorer.score(preds, refs)
    again = scorer.score(preds, refs)
    fresh = CodeBERTScorer(str(tiny_model_dir), layer=11, batch_size=1).score(preds, refs)
    for key, values in first.items():
        assert len(values) == len(preds)
        for v, w, z in zip(values, again[key], fresh[key], strict=True):
            assert -1.0 <= v <= 1.0
            assert v == w
            assert v == pytest.approx(z, abs=1e-5)
    # no scorable token (empty, or punctuation only): all scores are 0
    assert first["f1"][3] == 0.0 and first["precision"][4] == 0.0
    # with scorable tokens on both sides the F-scores are positive (and F1 lies between P, R)
    assert first["f3"][2] > 0.0
    p, r, f1 = first["precision"][2], first["recall"][2], first["f1"][2]
    assert min(p, r) - 1e-6 <= f1 <= max(p, r) + 1e-6


def test_codebertscore_layer_is_clamped(tiny_model_dir: Path, scorer: CodeBERTScorer) -> None:
    assert scorer.layer == 2
    assert CodeBERTScorer(str(tiny_model_dir), layer=0).layer == 0
    assert CodeBERTScorer(str(tiny_model_dir), layer=-3).layer == 0


def test_codebertscore_empty_and_mismatch(scorer: CodeBERTScorer) -> None:
    assert scorer.score([], []) == {"precision": [], "recall": [], "f1": [], "f3": []}
    with pytest.raises(ValueError):
        scorer.score(["a"], [])


def test_codebertscore_bad_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        CodeBERTScorer(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="config.json"):
        CodeBERTScorer(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError):
        CodeBERTScorer(str(tmp_path))


# --------------------------------------------------------------------------- real data


def test_real_gold_vs_gold(real_data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads((real_data_dir / "benchmarks" / "PythonBenchmarks.json").read_text())
    for split in ("test", "train"):
        codes = [r["Code"] for r in data[split]]
        assert all(is_valid(c) for c in codes)
        assert all(exact_match(c, c) for c in codes)
        assert bleu4(codes, codes) == pytest.approx(100.0)
        assert chrf(codes, codes) == pytest.approx(100.0)
    codes = [r["Code"] for r in data["test"]]
    shuffled = codes[:]
    random.Random(1234).shuffle(shuffled)
    em = sum(exact_match(p, g) for p, g in zip(shuffled, codes, strict=True)) / len(codes)
    bleu = bleu4(shuffled, codes)
    with capsys.disabled():
        print(f"\n[python test] shuffled gold: exact match {100 * em:.2f}%, BLEU-4 {bleu:.2f}")
    assert em < 0.05
    assert bleu < 30.0
