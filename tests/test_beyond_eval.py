"""The tables of "Beyond the paper": the documented corruptions, the repair table's rates
(against an oracle editor), and the guidance sweep's choice (held-out only)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from codefusion.cfrules import is_valid
from codefusion.data import Example, load_benchmark
from codefusion.pipeline import Candidate
from eval.beyond import guidance_sweep, repair_eval, repair_table
from eval.corrupt import KINDS, _family, corrupt

CF_GOLD = ["Between(15,85)", "OR(LessThan(0), Blanks())", "top(c[2], 3)", "Duplicate()"]
BASH_GOLD = [
    "find . -name '*.txt' -type f | xargs rm -f",
    "find . \\( -name '*jsp' -o -name '*java' \\) -type f -ls",
    "ls -la | head -n 5",
]


@pytest.mark.parametrize("bench, golds", [("cf", CF_GOLD), ("bash", BASH_GOLD)])
@pytest.mark.parametrize("kind", KINDS)
def test_corruptions_are_seeded_and_never_the_gold(bench, golds, kind):
    for seed, gold in enumerate(golds * 3):
        bad = corrupt(gold, kind, bench, seed)
        assert bad == corrupt(gold, kind, bench, seed)  # the same for the same seed
        if bad is None:
            continue
        assert bad != gold
        if kind == "paren":  # exactly one parenthesis fewer, the rest in order
            assert len(bad) == len(gold) - 1
            assert sum(bad.count(c) for c in "()") == sum(gold.count(c) for c in "()") - 1


def test_cf_corruptions_are_the_documented_ones():
    for seed in range(20):
        bad = corrupt("OR(LessThan(0), Blanks())", "name", "cf", seed)
        names = re.findall(r"(\w+)\(", bad)
        assert names != ["OR", "LessThan", "Blanks"]
        # One name changed, within its family; the rule still parses.
        diff = [(a, b) for a, b in zip(["OR", "LessThan", "Blanks"], names, strict=True) if a != b]
        assert len(diff) == 1 and _family(diff[0][0]) == _family(diff[0][1]) and is_valid(bad)
        num = corrupt("Between(15,85)", "number", "cf", seed)
        a, b = map(int, re.findall(r"\d+", num))
        assert (a, b) != (15, 85) and (a == 15 or b == 85)
        assert a in (15, 14, 16, 150) and b in (85, 84, 86, 850)
    assert corrupt("top(c[2], 3)", "name", "cf", 0).startswith(("bottom(", "topPercent("))
    assert corrupt("Duplicate()", "number", "cf", 0) is None  # nothing to change
    assert corrupt("Blanks()", "paren", "cf", 0) in ("Blanks)", "Blanks(")


def test_bash_corruptions_are_the_documented_ones():
    gold = "find . -name '*.txt' -type f | xargs rm -f"
    seen = set()
    for seed in range(30):
        name = corrupt(gold, "name", "bash", seed)
        first = name.split()[0], name.split("|")[1].split()[0], name.split("|")[1].split()[1]
        # One utility at a command position (find, xargs, or rm after xargs) replaced.
        assert sum(a != b for a, b in zip(("find", "xargs", "rm"), first, strict=True)) == 1
        flag = corrupt(gold, "number", "bash", seed)
        changed = [(a, b) for a, b in zip(gold.split(), flag.split(), strict=True) if a != b]
        assert len(changed) == 1 and changed[0][1].startswith("-")
        seen.add(changed[0][0])
    assert {"-name", "-type", "-f"} <= seen  # find predicates and short options alike
    assert corrupt("ls -la | head -n 5", "paren", "bash", 0) is None
    for seed in range(10):
        w = corrupt("head -n 5 file", "number", "bash", seed).split()
        assert w[0] == "head" and w[3] == "file" and (w[1] == "-n") != (w[2] == "5")
        assert w[2] in ("4", "5", "6", "50") and re.fullmatch(r"-[a-z]", w[1])


def test_corruptions_on_the_real_test_splits(real_data_dir):
    for benchmark in ("cf", "bash"):
        examples, _ = load_benchmark(benchmark, "test", real_data_dir)
        for kind in KINDS:
            made = [corrupt(e.code, kind, benchmark, i) for i, e in enumerate(examples)]
            assert all(b != e.code for b, e in zip(made, examples, strict=True))
            assert sum(b is not None for b in made) > 0.05 * len(examples)


class OracleEditor:
    """Returns the gold from strength 0.5 on (second candidate: the input), the input below."""

    def __init__(self, gold_of: dict[str, str]):
        self.gold_of = gold_of
        self.config = SimpleNamespace(code_len=40)
        self.tokenizer = SimpleNamespace(ids=lambda code: code.split())
        self.calls = []

    def edit(self, codes, prompts, strength, k, num_draws, seed, allow_empty, **options):
        self.calls.append((strength, num_draws, options))
        if strength >= 0.5:
            return [
                [Candidate(self.gold_of[p], 0.0), Candidate(c, -1.0)]
                for c, p in zip(codes, prompts, strict=True)
            ]
        return [[Candidate(" " + c + " ", 0.0)] for c in codes]  # fmt: skip


def test_repair_table_rates_against_an_oracle(tmp_path):
    examples = [Example(i, f"prompt {i}", g) for i, g in enumerate(CF_GOLD)]
    editor = OracleEditor({e.prompt: e.code for e in examples})
    m = repair_eval(
        editor, examples, "cf", [0.1, 0.5], tmp_path, kinds=("paren", "number"),
        num_draws=4, progress=False, steps=100,
    )  # fmt: skip
    rows = {(r["kind"], r["strength"]): r for r in m["rows"]}
    assert rows["paren", 0.1]["n"] == 4 and rows["number", 0.1]["n"] == 3  # Duplicate() has none
    assert m["left_out"]["number"] == {
        "not applicable": 1, "accepted by the metric": 0, "longer than the canvas": 0
    }  # fmt: skip
    for kind in ("paren", "number"):
        low, high = rows[kind, 0.1], rows[kind, 0.5]
        assert low["repair_top1"] == low["repair_top5"] == 0 and low["unchanged_top1"] == 100
        assert high["repair_top1"] == high["repair_top5"] == 100 and high["unchanged_top1"] == 0
    assert all(c[1:] == (4, {"steps": 100}) for c in editor.calls)
    records = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2 * (4 + 3) and all(r["gold"] != r["input"] for r in records)
    table = (tmp_path / "table.md").read_text()
    row = "| number | 0.5 | 3 | 100.0 / 100.0 / 100.0 | 100.0 / 100.0 / 100.0 | 0.0 |"
    assert table == repair_table(m) and row in table
    assert "number: 1 not applicable" in table and "paren: none" in table


def _fake_run(d, top1, top5, n=10):
    d.mkdir(parents=True)
    m = {"n": n, "top1": top1, "top3": top1, "top5": top5, "diversity": {"unique@k": 3.0}}
    m["options"] = {"k": 5, "seed": 0, "num_draws": 10, "steps": 100}
    m["options"]["guidance"] = float(d.name[1:])
    (d / "metrics.json").write_text(json.dumps(m))


def test_guidance_default_is_chosen_on_held_out_only(tmp_path):
    for w, (h1, h5), (t1, t5) in [
        (1.0, (20, 40), (90, 90)),  # best on test: must not matter
        (2.0, (30, 40), (10, 10)),
        (3.0, (30, 50), (10, 10)),  # tie on top-1, better top-5
    ]:
        _fake_run(tmp_path / "heldout" / f"w{w:g}", h1, h5)
        _fake_run(tmp_path / "test" / f"w{w:g}", t1, t5)
    opts = dict(k=5, seed=0, num_draws=10, steps=100)
    s = guidance_sweep(
        "m", "cf", [1.0, 2.0, 3.0], tmp_path, ["heldout", "test"], None, False, **opts
    )
    assert s["chosen_on_heldout"] == 3.0
    table = (tmp_path / "guidance.md").read_text()
    assert "| 3 (chosen) | 30.0 | 30.0 | 50.0 | 3.00 | 10.0 |" in table
    # A saved run with other options is not reused (here: not collected).
    s = guidance_sweep(
        "m", "cf", [1.0, 2.0], tmp_path, ["heldout"], None, False, **{**opts, "steps": 50}
    )
    assert s["chosen_on_heldout"] is None and s["rows"][0]["heldout"] is None


def test_corruptions_the_metric_accepts_are_left_out(tmp_path):
    """A changed number that no row of the item's data tells apart is not a repair task."""
    gold = "GreaterThan(5)"
    examples = [Example(0, "p", gold, data=[["v"], [1], [100]], labels=[0, 1])]
    editor = OracleEditor({"p": gold})
    m = repair_eval(editor, examples, "cf", [0.5], tmp_path, kinds=("number",), progress=False)
    assert m["rows"][0]["n"] == 0 and m["left_out"]["number"]["accepted by the metric"] == 1
