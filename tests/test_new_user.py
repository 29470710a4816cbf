"""A new user's probes, each answered in one line: an ``error:`` and exit status 2, or a
``warning:`` and a correct result. Never a traceback, a raw Python message, silent acceptance
of a nonsensical value, or a silent overwrite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bench.fixtures import write_fixture_data
from codefusion.cli import main as cli
from eval.__main__ import main as eval_main
from train.__main__ import main as train_main

TINY = "configs/cf-tiny.yaml"


def _status(main, argv: list[str]) -> int:
    """A CLI's exit status, also when argparse ends it with SystemExit (as a shell sees it)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [x for x in err.splitlines() if not x.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    "override, message",
    [
        ("pretrain.lr=abc", "pretrain.lr must be a number, got 'abc'"),
        ("seed=abc", "seed must be a whole number, got 'abc'"),
        ("pretrain.lr=-1", "pretrain.lr must lie in (0, inf), got -1"),
        ("pretrain.warmup_steps=abc", "pretrain.warmup_steps must be a whole number"),
        ("pretrain.batch_size=1.5", "pretrain.batch_size must be a whole number, got 1.5"),
        ("pretrain.max_steps=abc", "pretrain.max_steps must be a whole number"),
        ("pretrain.mask_rate=abc", "pretrain.mask_rate must be a number, got 'abc'"),
        ("finetune.max_steps=-1", "finetune.max_steps must lie in [1, inf), got -1"),
        ("finetune.val_fraction=2", "finetune.val_fraction must lie in [0, 1), got 2"),
        ("finetune.nonsense=1", "unknown keys finetune.nonsense"),
        ("model.code_len=0", "code_len must lie in [1, inf), got 0"),
        ("model.preset=huge", "model.preset must be one of paper, small, tiny"),
        ("seed=[1", "not a value"),
    ],
)
def test_bad_config_values_are_one_line_errors(override, message, capsys):
    assert train_main(["--config", TINY, "--set", override]) == 2
    _one_line_error(capsys, message)


def test_bad_yaml_and_missing_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert train_main(["--config", str(bad)]) == 2
    _one_line_error(capsys, "invalid YAML")
    assert train_main(["--config", str(tmp_path / "none.yaml")]) == 2
    _one_line_error(capsys, "not found")


def _config(tmp_path: Path, data: Path, name: str = "u") -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"""
name: {name}
language: cf
out_dir: {tmp_path / "runs"}
data_dir: {data}
model: {{preset: tiny, code_len: 16}}
tokenizer: {{path: {tmp_path / "tok"}, vocab_size: 300, languages: [cf]}}
pretrain: {{max_steps: 2, batch_size: 8, val_every: 2, ckpt_every: 2, warmup_steps: 1}}
finetune: {{max_steps: 2, batch_size: 8, val_every: 2, ckpt_every: 2, warmup_steps: 1, val_fraction: 0.1}}
"""
    )
    return cfg


def test_a_run_checks_its_inputs_before_its_first_step(tmp_path, capsys):
    data = write_fixture_data(tmp_path / "data")
    (data / "benchmarks" / "CFRuleBenchmarks.json").write_text('{"train": [')
    cfg = _config(tmp_path, data)
    assert train_main(["--config", str(cfg), "--no-progress"]) == 2
    _one_line_error(capsys, "CFRuleBenchmarks.json: malformed JSON")
    assert not (tmp_path / "runs" / "u" / "pretrain").exists()  # nothing trained first
    write_fixture_data(data)
    assert train_main(["--config", str(cfg), "--stage", "finetune", "--no-progress"]) == 2
    _one_line_error(capsys, "pretrain/model does not exist", "--from-scratch")


def test_a_second_run_of_a_name_does_not_overwrite_the_first(tmp_path, capsys):
    data = write_fixture_data(tmp_path / "data")
    cfg = _config(tmp_path, data)
    assert train_main(["--config", str(cfg), "--no-progress"]) == 0
    final = tmp_path / "runs" / "u" / "model"
    before = (final / "model.safetensors").read_bytes()
    assert train_main(["--config", str(cfg), "--no-progress", "--fresh"]) == 2
    _one_line_error(capsys, "holds the model of an earlier run", "--overwrite")
    assert (final / "model.safetensors").read_bytes() == before
    assert json.loads((final / "training.json").read_text())["prompt_dropout"] == 0.0
    # Two evaluations of two runs' exports (both folders are called `model`) keep both.
    shutil.copytree(tmp_path / "runs" / "u", tmp_path / "runs" / "v")
    base = ["run", "--benchmark", "cf", "--data", str(data), "--steps", "2", "--limit", "2"]
    for name in ("u", "v"):
        model = tmp_path / "runs" / name / "model"
        assert eval_main([*base, "--model", str(model), "--out", str(tmp_path / "r" / name)]) == 0
    assert (tmp_path / "r" / "u" / "metrics.json").is_file()
    assert (tmp_path / "r" / "v" / "metrics.json").is_file()
    capsys.readouterr()
    out = ["--out", str(tmp_path / "r" / "u")]
    assert eval_main([*base, "--model", str(tmp_path / "runs" / "u" / "model"), *out]) == 2
    _one_line_error(capsys, "holds the results of an earlier run", "--overwrite")
    limit0 = [*base, "--model", str(tmp_path / "runs" / "u" / "model"), "--limit", "0"]
    assert _status(eval_main, limit0) == 2
    _one_line_error(capsys, "--limit", "at least 1")


@pytest.fixture()
def model_dir(tiny_model, tmp_path) -> str:
    tiny_model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "training.json").write_text('{"prompt_dropout": 0.0}')
    return str(tmp_path / "m")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--eta", "-1"], "eta must lie in [0, 1], got -1.0"),
        (["--eta", "2"], "eta must lie in [0, 1]"),
        (["--k", "0"], "k must be at least 1"),
        (["--steps", "0"], "steps must be between 1 and"),
        (["--steps", "99999"], "steps must be between 1 and"),
        (["--steps", "-5"], "steps must be between 1 and"),
        (["--device", "tpu9"], "unknown device 'tpu9'"),
        (["--mode", "beam"], "CodeFusion takes no option 'mode'"),
        (["--steps", "abc"], "argument --steps: invalid int value"),
    ],
)
def test_bad_generation_flags_are_one_line_errors(model_dir, argv, message, capsys):
    assert _status(cli, ["generate", "--model", model_dir, *argv, "cells greater than 5"]) == 2
    _one_line_error(capsys, message)


def test_an_unavailable_device_is_said_as_such(model_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli(["generate", "--model", model_dir, "--device", "cuda", "x"]) == 2
    _one_line_error(capsys, "device cuda is not available")


def test_usable_input_gets_a_warning_and_a_result(model_dir, capsys):
    assert cli(["generate", "--model", model_dir, "--steps", "3", "--guidance", "3", "x"]) == 0
    cap = capsys.readouterr()
    assert "warning: guidance needs a model fine-tuned with prompt_dropout" in cap.err
    assert cap.out.startswith("1. [")
    assert cli(["generate", "--model", model_dir, "--steps", "3", "cells\x00 greater\x1b"]) == 0
    cap = capsys.readouterr()
    assert "control character(s) removed" in cap.err and cap.out.startswith("1. [")


def test_output_marks_what_does_not_parse_and_says_why_fewer(model_dir, capsys):
    argv = ["generate", "--model", model_dir, "--steps", "3", "--k", "5", "--draws", "6"]
    assert cli([*argv, "--syntax-rank", "cf", "cells"]) == 0
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    parses = [not x.endswith("(does not parse)") for x in lines]
    assert parses == sorted(parses, reverse=True)  # parse-first, the rest marked
    if len(lines) < 5:
        assert "note: " in cap.err and "repeated these" in cap.err
    assert cli([*argv, "--json", "a", "b"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["prompt"] for o in out] == ["a", "b"]


def test_a_model_directory_without_its_tokenizer(model_dir, capsys):
    Path(model_dir, "tokenizer.json").unlink()
    assert cli(["generate", "--model", model_dir, "x"]) == 2
    err = _one_line_error(capsys)
    assert "tokenizer" in err
