"""Diagnostics, held-out splits by program, and the ablation plan: the tools that judge a model."""

from __future__ import annotations

import json

import pytest
import torch

from bench.fixtures import CF_CODES, CF_PROMPTS
from codefusion.batch import Batch
from codefusion.data import Example, holdout_examples, split_holdout
from codefusion.diagnostics import default_steps, model_diagnostics
from codefusion.languages import language
from codefusion.scoring.evaluate import generation_diagnostics, length_accuracy
from eval.ablation import PlanError, load_plan, resolve_rows


def test_holdout_by_code_never_splits_a_program():
    codes = ["Duplicate()", "Duplicates()", "GreaterThan(5)", "GreaterThan( 5)", "Blanks()"] * 8
    exs = [Example(i, f"prompt {i}", c) for i, c in enumerate(codes)]
    train, val = holdout_examples(exs, 0.3, seed=0, lang="cf")
    key = language("cf").program_key
    assert val and train and len(train) + len(val) == len(exs)
    assert not {key(e.code) for e in train} & {key(e.code) for e in val}
    # Canonical form: Duplicate()/Duplicates() are one program for CF.
    assert key("Duplicate()") == key("Duplicates()")
    again = holdout_examples(exs, 0.3, seed=0, lang="cf")
    assert [e.id for e in again[1]] == [e.id for e in val]
    rows_train, rows_val = split_holdout(list(range(10)), 0.2, seed=1)
    assert len(rows_val) == 2 and sorted(rows_train + rows_val) == list(range(10))


def test_model_diagnostics_on_a_batch(tiny_model, tiny_tokenizer):
    ids, mask, _ = tiny_tokenizer.encode_prompts(CF_PROMPTS, 24)
    code, _ = tiny_tokenizer.encode_code(CF_CODES, 16)
    batch = Batch(ids, mask, code, torch.zeros(len(CF_CODES), dtype=torch.bool))
    d = model_diagnostics(tiny_model.model.eval(), tiny_model.schedule, batch)
    steps = default_steps(tiny_model.schedule)
    assert steps[0] == 0 and steps[-1] == tiny_model.schedule.steps - 1
    assert set(d) == {"decoder_clean_acc", *(f"x0_nn_acc@{t}" for t in steps)}
    assert all(0.0 <= v <= 1.0 for v in d.values())


def test_generation_diagnostics_and_length_accuracy(tiny_model):
    exs = [Example(i, p, c) for i, (p, c) in enumerate(zip(CF_PROMPTS, CF_CODES, strict=True))]
    d = generation_diagnostics(tiny_model, exs[:3], "cf", k=2, steps=3, num_draws=2)
    assert set(d) >= {"top1", "top5", "valid_top1", "unique@k", "length_acc", "length_acc_top1"}

    class C:
        def __init__(self, code):
            self.code = code

    tok = tiny_model.tokenizer
    acc = length_accuracy(tok, exs[:2], [[C(CF_CODES[0]), C("x")], [C("y")]])
    assert acc["length_acc_top1"] == 50.0


def test_steps_curve_writes_one_row_per_step_count(tiny_model, tmp_path):
    """`python -m eval steps-curve` imported its diagnostics from a module that had moved."""
    from eval.curves import steps_curve

    exs = [Example(i, p, c) for i, (p, c) in enumerate(zip(CF_PROMPTS, CF_CODES, strict=True))]
    rows = steps_curve(tiny_model, exs[:2], "cf", [1, 2], tmp_path / "c", k=2, num_draws=2)
    assert [r["steps"] for r in rows] == [1, 2]
    assert json.loads((tmp_path / "c" / "curve.json").read_text()) == rows
    assert (tmp_path / "c" / "curve.png").is_file()

    # Two models' curves in one plot, read back from their curve.json (no generation).
    from eval.__main__ import main as eval_main
    from eval.curves import steps_plot

    steps_curve(tiny_model, exs[:2], "cf", [1, 3], tmp_path / "d", k=2, num_draws=2)
    both = steps_plot([tmp_path / "c", tmp_path / "d"], ["a", "b"], tmp_path / "both.png")
    assert [r["steps"] for r in both["a"]] == [1, 2] and [r["steps"] for r in both["b"]] == [1, 3]
    assert (tmp_path / "both.png").is_file() and (tmp_path / "both.json").is_file()
    bad = ["steps-plot", str(tmp_path / "c"), "--labels", "a", "--out", str(tmp_path / "x.png")]
    assert eval_main(bad + ["--metrics", "bleu"]) == 2  # one-line error, no traceback
    assert eval_main(["steps-plot", str(tmp_path), "--labels", "a", "--out", "x.png"]) == 2


def test_an_ablation_row_is_scored_on_its_own_held_out_share(tmp_path, monkeypatch):
    """A row trained with another seed holds out other programs: its held-out evaluation must
    use that seed (with seed 0's share it was scored on rows it had trained on)."""
    from eval import ablation

    (tmp_path / "base.yaml").write_text(
        "name: b\nlanguage: cf\nseed: 0\nmodel: {preset: tiny}\nfinetune: {val_fraction: 0.2}\n"
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"base: {tmp_path / 'base.yaml'}\nbenchmark: cf\nrows:\n"
        "  - {name: a, label: a}\n  - {name: b, label: b, set: [seed=3]}\n"
    )
    calls = []
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        (tmp_path / "runs" / f"ablation-{name}" / "model").mkdir(parents=True)
    monkeypatch.setattr(ablation, "_call", lambda cmd: calls.append(cmd))
    monkeypatch.setattr(ablation, "ablation_table", lambda out, rows: "")
    ablation.run_plan(plan, tmp_path / "out")
    held = [c for c in calls if "heldout" in c]
    seeds = [c[c.index("--holdout-seed") + 1] for c in held]
    fractions = {c[c.index("--holdout-fraction") + 1] for c in held}
    assert seeds == ["0", "3"] and fractions == {"0.2"}
    assert not any("--holdout-seed" in c for c in calls if "test" in c)


def test_ablation_rows_inherit_the_previous_row(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        """
base: configs/cf-small-cpu.yaml
benchmark: cf
rows:
  - {name: a, both: {decoder_input: x0_hat}}
  - {name: b, both: {decoder_input: clean}, generate: {length: predicted}}
  - {name: c, set: [model.dropout=0.1]}
  - {name: d, inherit: a, set: [model.dropout=0.1]}
  - {name: e, reuse_model: true, generate: {rank: votes}}
"""
    )
    rows = {r["name"]: r for r in resolve_rows(load_plan(plan))}
    assert rows["c"]["set"] == [
        'pretrain.decoder_input="x0_hat"',
        'finetune.decoder_input="x0_hat"',
        'pretrain.decoder_input="clean"',
        'finetune.decoder_input="clean"',
        "model.dropout=0.1",
    ]
    assert rows["c"]["generate"] == {"length": "predicted"}
    assert rows["d"]["set"][-1] == "model.dropout=0.1" and rows["d"]["generate"] == {}
    # A row that only changes how to generate evaluates its parent's model (no training).
    assert rows["e"]["model_of"] == "d" and rows["e"]["set"] == rows["d"]["set"]
    assert rows["e"]["generate"] == {"rank": "votes"} and rows["c"]["model_of"] == "c"
    bad_reuse = tmp_path / "reuse.yaml"
    bad_reuse.write_text(
        json.dumps({"base": "x", "benchmark": "cf", "rows": [{"name": "a", "reuse_model": True}]})
    )
    with pytest.raises(PlanError, match="reuse_model"):
        resolve_rows(load_plan(bad_reuse))
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"base": "x", "benchmark": "cf", "rows": [{"name": "a"}] * 2}))
    with pytest.raises(PlanError, match="distinct"):
        load_plan(bad)
