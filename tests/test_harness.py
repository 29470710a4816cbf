"""The harness: sanity bars (gold scores 100%, shuffled gold near 0), outputs, tables, plot."""

from __future__ import annotations

import json
import random

import pytest

from codefusion.data import load_benchmark
from codefusion.pipeline import Candidate
from eval.harness import run_eval, score
from eval.languages import SCORING
from eval.tables import combined_markdown, load_results, quality_diversity_plot


class ListGenerator:
    """Answers each prompt with given programs: the scoring oracle of the sanity bars."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers

    def generate(self, prompts, k=5, seed=0, allow_empty=False, **_):
        return [
            [Candidate(c, -float(i)) for i, c in enumerate(self.answers[p][:k])] for p in prompts
        ]


def _gold(examples):
    return [[Candidate(e.code, 0.0)] for e in examples]


@pytest.mark.parametrize("lang", ["cf", "bash", "python"])
def test_gold_scores_100_and_shuffled_gold_near_zero(real_data_dir, lang):
    for split in ("test", "train"):
        examples, _ = load_benchmark(lang, split, real_data_dir)
        _, m = score(SCORING[lang], examples, _gold(examples))
        assert m["top1"] == m["top5"] == 100.0, (lang, split)
    examples, _ = load_benchmark(lang, "test", real_data_dir)
    shuffled = [e.code for e in examples]
    random.Random(0).shuffle(shuffled)
    _, m = score(SCORING[lang], examples, [[Candidate(c, 0.0)] for c in shuffled])
    print(f"[{lang}] shuffled gold top-1: {m['top1']:.1f}%  decided by: {m['decided_by']}")
    assert m["top1"] < 15.0


def test_cf_gold_is_178_of_178_with_116_by_execution(real_data_dir):
    examples, _ = load_benchmark("cf", "test", real_data_dir)
    records, m = score(SCORING["cf"], examples, _gold(examples))
    assert sum(r["correct"][0] for r in records) == 178
    assert m["decided_by"]["execution"] == 116


def test_metrics_are_deterministic(fixture_data):
    examples, _ = load_benchmark("cf", "test", fixture_data)
    cands = [[Candidate("GreaterThan(5)", -1.0), Candidate(e.code, -2.0)] for e in examples]
    assert score(SCORING["cf"], examples, cands) == score(SCORING["cf"], examples, cands)


def test_run_eval_writes_outputs_and_topk_counts(fixture_data, tmp_path):
    examples, _ = load_benchmark("cf", "test", fixture_data)
    answers = {e.prompt: ["Blanks()", "Errors()", e.code, "Duplicate()"] for e in examples}
    m = run_eval(
        ListGenerator(answers), "cf", examples, tmp_path / "r", system="oracle", k=5, batch_size=4
    )
    # The gold sits third: wrong at top-1 (unless the gold is Blanks()), right at top-3 and top-5.
    blanks = sum(e.code == "Blanks()" for e in examples)
    assert m["top1"] == pytest.approx(100 * blanks / len(examples))
    assert m["top3"] == m["top5"] == 100.0
    lines = (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()
    assert (
        len(lines) == len(examples) and json.loads(lines[0])["candidates"][0]["code"] == "Blanks()"
    )
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["n"] == len(examples)
    table = (tmp_path / "r" / "table.md").read_text()
    assert "CodeFusion 75M (paper, est)" in table and "execution match" in table
    results = load_results([tmp_path])
    assert "oracle" in combined_markdown(results)
    quality_diversity_plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_python_offline_metrics():
    from codefusion.data import Example

    codes = [
        "sorted(d.items(), key=lambda x: x[1])",
        "os.path.join(root, name)",
        "print(' '.join(words))",
    ]
    examples = [Example(i, "p", c) for i, c in enumerate(codes)]
    _, m = score(SCORING["python"], examples, _gold(examples))
    assert m["bleu4_top1"] == pytest.approx(100.0) and m["chrf_top1"] == pytest.approx(100.0)


def test_diversity_of_identical_candidates_is_zero(fixture_data):
    examples, _ = load_benchmark("bash", "test", fixture_data)
    cands = [[Candidate("ls -la", 0.0), Candidate("ls  -la", -1.0)] for _ in examples]
    _, m = score(SCORING["bash"], examples, cands)
    assert (
        m["diversity"]["unique@k"] == 1.0 and m["diversity"]["mean_pairwise_edit_distance"] == 0.0
    )
