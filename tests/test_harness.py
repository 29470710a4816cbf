"""The harness: sanity bars (gold scores 100%, shuffled gold near 0), outputs, tables, plot."""

from __future__ import annotations

import json
import random

import pytest

from codefusion.data import load_benchmark
from codefusion.errors import UserError
from codefusion.pipeline import Candidate
from codefusion.scoring.evaluate import score
from eval.harness import run_eval
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
        _, m = score(lang, examples, _gold(examples))
        assert m["top1"] == m["top5"] == 100.0, (lang, split)
    examples, _ = load_benchmark(lang, "test", real_data_dir)
    shuffled = [e.code for e in examples]
    random.Random(0).shuffle(shuffled)
    _, m = score(lang, examples, [[Candidate(c, 0.0)] for c in shuffled])
    print(f"[{lang}] shuffled gold top-1: {m['top1']:.1f}%  decided by: {m['decided_by']}")
    assert m["top1"] < 15.0


def test_cf_gold_is_178_of_178_with_116_by_execution(real_data_dir):
    examples, _ = load_benchmark("cf", "test", real_data_dir)
    records, m = score("cf", examples, _gold(examples))
    assert sum(r["correct"][0] for r in records) == 178
    assert m["decided_by"]["execution"] == 116


def test_metrics_are_deterministic(fixture_data):
    examples, _ = load_benchmark("cf", "test", fixture_data)
    cands = [[Candidate("GreaterThan(5)", -1.0), Candidate(e.code, -2.0)] for e in examples]
    assert score("cf", examples, cands) == score("cf", examples, cands)


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
    _, m = score("python", examples, _gold(examples))
    assert m["bleu4_top1"] == pytest.approx(100.0) and m["chrf_top1"] == pytest.approx(100.0)


def test_diversity_of_identical_candidates_is_zero(fixture_data):
    examples, _ = load_benchmark("bash", "test", fixture_data)
    cands = [[Candidate("ls -la", 0.0), Candidate("ls  -la", -1.0)] for _ in examples]
    _, m = score("bash", examples, cands)
    assert (
        m["diversity"]["unique@k"] == 1.0 and m["diversity"]["mean_pairwise_edit_distance"] == 0.0
    )


# --------------------------------------------------------------- NL2Bash-comparable figure


def _bash_data_with_defined(root, ids):
    """The fixture data folder (Bash test items 0-3) plus a list of NL2Bash-defined items."""
    from conftest import write_fixture_data

    write_fixture_data(root)
    (root / "nl2bash-official-defined.json").write_text(json.dumps({"count": len(ids), "ids": ids}))
    return root


def test_nl2bash_comparable_counts_defined_items_over_all(tmp_path):
    from codefusion.scoring.evaluate import find_nl2bash_subset

    data = _bash_data_with_defined(tmp_path, [0, 2])
    examples, _ = load_benchmark("bash", "test", data)
    subset = find_nl2bash_subset(data)
    records, m = score("bash", examples, _gold(examples), subset)
    assert m["top1"] == 100.0
    nb = m["nl2bash_comparable"]
    assert nb["top1"] == nb["top5"] == nb["ceiling"] == 50.0 and nb["items"] == 2
    assert [r["nl2bash_defined"] for r in records] == [True, False, True, False]
    # a wrong answer on a defined item costs it there; on an undefined item only in ours
    cands = [[Candidate("ls -l" if e.id in (0, 1) else e.code, 0.0)] for e in examples]
    _, m = score("bash", examples, cands, subset)
    assert m["top1"] == 50.0 and m["nl2bash_comparable"]["top1"] == 25.0


def test_nl2bash_comparable_is_omitted_and_said_without_the_list(fixture_data, tmp_path):
    from codefusion.scoring.evaluate import find_nl2bash_subset

    examples, _ = load_benchmark("bash", "test", fixture_data)
    subset = find_nl2bash_subset(fixture_data)
    assert subset.ids is None and "nl2bash-official-defined.json" in subset.source
    m = run_eval(
        ListGenerator({e.prompt: [e.code] for e in examples}),
        "bash",
        examples,
        tmp_path / "r",
        system="oracle",
        nl2bash=subset,
        progress=False,
    )
    assert m["top1"] == 100.0 and "omitted" in m["nl2bash_comparable"]
    table = (tmp_path / "r" / "table.md").read_text()
    assert (
        "NL2Bash-comparable figure omitted" in table and "(ours, NL2Bash-comparable)" not in table
    )


def test_nl2bash_list_asked_for_explicitly_must_exist(fixture_data, tmp_path, capsys):
    from codefusion.data import DataError, load_nl2bash_defined
    from eval.__main__ import main

    with pytest.raises(DataError, match="file not found"):
        load_nl2bash_defined(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"ids": "all"}')
    with pytest.raises(DataError, match='"ids" list'):
        load_nl2bash_defined(tmp_path / "bad.json")
    # the command answers in one line, before any model is loaded
    argv = ["run", "--model", str(tmp_path / "no-model"), "--benchmark", "bash"]
    argv += ["--data", str(fixture_data), "--nl2bash-defined", str(tmp_path / "missing.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.json: file not found" in err
    assert len(err.strip().splitlines()) == 1
    argv = ["run", "--model", "x", "--benchmark", "cf", "--data", str(fixture_data)]
    assert main([*argv, "--nl2bash-defined", str(tmp_path / "bad.json")]) == 2
    assert "bash benchmark only" in capsys.readouterr().err


def test_tables_name_the_figure_beside_the_paper(tmp_path):
    from codefusion.scoring.evaluate import find_nl2bash_subset

    data = _bash_data_with_defined(tmp_path / "data", [0, 1, 2])
    examples, _ = load_benchmark("bash", "test", data)
    gen = ListGenerator({e.prompt: [e.code] for e in examples})
    run_eval(gen, "bash", examples, tmp_path / "r" / "a", system="A", progress=False,
             nl2bash=find_nl2bash_subset(data))  # fmt: skip
    run_eval(gen, "bash", examples, tmp_path / "r" / "b", system="B", progress=False)
    table = (tmp_path / "r" / "a" / "table.md").read_text()
    assert "| A (ours, NL2Bash-comparable) |" in table and "ceiling 75.0" in table
    assert "paper's Bash numbers stand beside the NL2Bash-comparable figure" in table
    md = combined_markdown(load_results([tmp_path / "r"]))
    assert "| bash | A (NL2Bash-comparable) |" in md and "| 75.0 | 75.0 | 75.0 |" in md
    assert "| bash | B (NL2Bash-comparable) |" not in md
    assert "stand beside the NL2Bash-comparable figure" in md and "omitted for B" in md


def test_real_gold_nl2bash_comparable_is_79_1(real_data_dir):
    from codefusion.scoring.evaluate import find_nl2bash_subset

    subset = find_nl2bash_subset(real_data_dir)
    if subset.ids is None:
        pytest.skip(subset.source)
    examples, _ = load_benchmark("bash", "test", real_data_dir)
    _, m = score("bash", examples, _gold(examples), subset)
    nb = m["nl2bash_comparable"]
    assert m["top1"] == 100.0 and nb["items"] == 1996 and len(examples) == 2522
    assert nb["top1"] == nb["top5"] == pytest.approx(100 * 1996 / 2522)
    assert f"{nb['top1']:.1f}" == "79.1"


# --------------------------------------------------------------------------- rescore


def test_rescore_rewrites_verdicts_and_keeps_the_run(fixture_data, tmp_path, capsys):
    from eval.__main__ import main
    from eval.harness import rescore

    examples, _ = load_benchmark("cf", "test", fixture_data)
    answers = {e.prompt: ["Blanks()", e.code] for e in examples}
    out = tmp_path / "runs" / "r"
    run_eval(ListGenerator(answers), "cf", examples, out, system="oracle", progress=False)
    files = {f: (out / f).read_text() for f in ("predictions.jsonl", "metrics.json", "table.md")}
    # stale verdicts, as a metric change would leave them
    stale = json.loads(files["metrics.json"])
    stale.update(top1=0.0, top5=0.0)
    (out / "metrics.json").write_text(json.dumps(stale))
    lines = [json.loads(x) for x in files["predictions.jsonl"].splitlines()]
    (out / "predictions.jsonl").write_text(
        "".join(json.dumps(dict(r, correct=[False, False])) + "\n" for r in lines)
    )
    m = rescore(out, {"test": examples})
    assert m["top5"] == 100.0 and m["system"] == "oracle"
    assert {f: (out / f).read_text() for f in files} == files
    # the command, on the parent folder; a mismatching data folder is a one-line error
    assert main(["rescore", str(tmp_path / "runs"), "--data", str(fixture_data)]) == 0
    assert "top-5 100.0" in capsys.readouterr().out
    assert {f: (out / f).read_text() for f in files} == files
    bash_examples, _ = load_benchmark("bash", "test", fixture_data)
    with pytest.raises(UserError, match="data the predictions were made on"):
        rescore(out, {"test": bash_examples})
    assert main(["rescore", str(tmp_path / "nothing"), "--data", str(fixture_data)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
