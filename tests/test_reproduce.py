"""The one-command reproduction (bench/reproduce.py), its planner and lease plan
(bench/budget.py) and the carry folder (bench/prepare_carry.py), on CPU with tiny fixtures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.budget import (
    PAPER_PLAN,
    Budget,
    BudgetError,
    Job,
    Lease,
    call_command,
    check_lease,
    choose_eval_steps,
    fit_cost,
    parse_split,
    planned_steps,
)
from tests.fixtures import write_fixture_data

REPO = Path(__file__).resolve().parents[1]


# --- the planner --------------------------------------------------------------------------------


def test_split_parses_and_rejects_clearly():
    assert parse_split(None) == {"pretrain": 0.45, "finetune": 0.25, "eval": 0.25, "margin": 0.05}
    s = parse_split("2,1,1,0")
    assert s["pretrain"] == pytest.approx(0.5) and s["margin"] == 0.0
    for bad in ("1,2,3", "a,b,c,d", "1,1,0,1", "-1,1,1,1"):
        with pytest.raises(BudgetError, match="--split"):
            parse_split(bad)


def test_phase_deadlines_share_what_is_left():
    now = [100.0]
    b = Budget(100.0, start=100.0, clock=lambda: now[0])
    assert b.deadline == pytest.approx(195.0)  # the 5% margin is never planned
    # Pre-training's share of all three phases; fine-tuning's of what is left when it starts.
    assert b.phase_deadline("pretrain") == pytest.approx(100 + 95 * 0.45 / 0.95)
    now[0] = 130.0  # pre-training ended early: the others share its leftover
    assert b.phase_deadline("finetune") == pytest.approx(130 + 65 * 0.25 / 0.5)
    assert b.phase_deadline("eval") == pytest.approx(195.0)


def test_steps_and_eval_steps_fit_the_time():
    assert planned_steps(10, 2.0, 100.0, safety=0.9) == 190
    assert planned_steps(10, 0.0, 100.0) == 10
    per_batch, per_step = fit_cost(1.0 + 5 * 0.1, 5, 1.0 + 20 * 0.1, 20)
    assert per_batch == pytest.approx(1.0) and per_step == pytest.approx(0.1)
    # 100 items, batch 10: 10 batches x (1 + 0.1 s) per step: 1200 steps cost 1210 s x 1.15.
    plan = choose_eval_steps(100, 10, 1.0, 0.1, 0.0, 1400.0)
    assert plan.steps == 1200 and plan.complete and "all 100" in plan.note
    plan = choose_eval_steps(100, 10, 1.0, 0.1, 0.0, 500.0)
    assert plan.steps == 400 and plan.complete and "largest" in plan.note
    plan = choose_eval_steps(100, 10, 1.0, 0.1, 0.0, 5.0)  # not even 10 steps for all
    assert plan.steps == 10 and not plan.complete and plan.items < 100
    assert plan.predicted_s <= 5.0 or plan.items == 10  # at least one batch


def test_the_lease_plan_fits_the_lease():
    plan = check_lease()
    lease = Lease()
    assert plan["total_minutes"] <= lease.total_minutes
    for call in plan["calls"]:
        assert call["minutes"] <= lease.command_minutes
        assert call["files"] <= lease.files_per_call
        assert len(call["command"]) <= 2000
    assert "--smoke" in plan["calls"][0]["command"]
    jobs = [j for call in PAPER_PLAN for j in call if not j.smoke]
    assert {(j.benchmark, j.preset) for j in jobs} == {
        (b, p) for b in ("cf", "bash", "python") for p in ("paper", "ar-paper")
    }


def test_a_plan_that_does_not_fit_is_refused_clearly():
    with pytest.raises(BudgetError, match="over the 20 minutes"):
        check_lease(PAPER_PLAN, Lease(total_minutes=20))
    with pytest.raises(BudgetError, match="over the 5-minute limit of one command"):
        check_lease(PAPER_PLAN, Lease(command_minutes=5))
    too_many = (PAPER_PLAN[0], (*PAPER_PLAN[1], Job("x", "cf", "small", 0.1)), *PAPER_PLAN[2:])
    with pytest.raises(BudgetError, match="12 result files"):
        check_lease(too_many)
    with pytest.raises(BudgetError, match="no python, python AR baseline"):
        check_lease(PAPER_PLAN[:3])
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "budget.py"), "--total-minutes", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: the plan needs")
    assert len(r.stderr.strip().splitlines()) == 1


def test_readme_gives_the_plans_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "## Reproducing on one GPU" in readme
    for call in PAPER_PLAN:
        assert call_command(call) in readme, call_command(call)[:200]


# --- the carry folder ---------------------------------------------------------------------------


def _full_fixture(root: Path) -> Path:
    data = write_fixture_data(root)
    (data / "nl2bash-official-defined.json").write_text(json.dumps({"ids": [0, 1]}))
    (data / "NOTICE.md").write_text("fixture data\n")
    (data / "pretraining" / "PythonSnippets.txt").write_text("x = 1\n")
    return data


def test_prepare_carry_copies_the_data_and_refuses_clearly(tmp_path):
    from bench.prepare_carry import CarryError, prepare_carry

    data = _full_fixture(tmp_path / "data")
    repo = tmp_path / "repo"
    repo.mkdir()
    report = prepare_carry(
        data, repo / ".carry", repo=repo, download=None, python_corpus=lambda: ["y = 2", "z = 3"]
    )
    carry = repo / ".carry"
    assert (carry / "data" / "benchmarks" / "CFRuleBenchmarks.json").is_file()
    assert (carry / "data" / "nl2bash-official-defined.json").is_file()
    assert (carry / "data" / "pretraining" / "PythonSnippets.txt").is_file()
    assert json.loads((carry / "source.json").read_text())["python_corpus"]["snippets"] == 2
    assert "/.carry/" in (repo / ".gitignore").read_text().splitlines()
    assert report["bytes"] < 2**20 and report["gitignore_added"]
    with pytest.raises(CarryError, match="more than the 0 MiB that travel"):
        prepare_carry(data, repo / ".carry", repo=repo, download=None, limit_bytes=10)
    (data / "NOTICE.md").unlink()
    with pytest.raises(CarryError, match="missing from the data folder: .*NOTICE.md"):
        prepare_carry(data, repo / ".carry", repo=repo, download=None)


# --- the command --------------------------------------------------------------------------------


def test_help_and_user_errors_answer_in_one_line(tmp_path, capsys):
    from bench import reproduce

    with pytest.raises(SystemExit) as e:
        reproduce.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--budget-minutes" in out and "--smoke" in out
    o = ["--out", str(tmp_path / "o")]
    assert reproduce.main(["--benchmark", "cf", "--budget-minutes", "0.1", *o]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --budget-minutes 0.1") and len(err.splitlines()) == 1
    missing = tmp_path / "nowhere"
    assert (
        reproduce.main(["--benchmark", "cf", "--budget-minutes", "1", *o, "--data", str(missing)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(missing) in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--benchmark", "cf", *o])
    assert e.value.code == 2 and "--budget-minutes is required" in capsys.readouterr().err


def test_reproduce_runs_end_to_end_inside_its_budget(tmp_path, monkeypatch):
    """The whole command at a 25-second budget on the fixture CF set: both stages, the
    evaluation of every test item at a stated step count, four compact files."""
    from bench import reproduce

    data = write_fixture_data(tmp_path / "data")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # nothing is written into the checkout
    seconds = 25.0
    argv = ["--benchmark", "cf", "--preset", "tiny", "--budget-minutes", str(seconds / 60)]
    argv += ["--out", str(out), "--data", str(data), "--device", "cpu", "--no-progress"]
    argv += ["--set", f"tokenizer.path={tmp_path / 'tok'}", "--set", "tokenizer.vocab_size=300"]
    argv += ["--set", "tokenizer.languages=[cf]", "--eval-batch-size", "8"]
    t0 = time.monotonic()
    assert reproduce.main(argv) == 0
    wall = time.monotonic() - t0
    assert wall <= seconds * 1.1
    assert sorted(p.name for p in out.iterdir()) == sorted(reproduce.OUTPUTS)
    for p in out.iterdir():
        assert p.stat().st_size < reproduce.MAX_OUTPUT_BYTES
    run = json.loads((out / "run.json").read_text())
    assert set(reproduce.RUN_KEYS) <= set(run)
    assert run["ended_inside_budget"] and run["elapsed_s"] <= seconds
    assert run["budget"]["seconds"] == pytest.approx(seconds)
    for stage in ("pretrain", "finetune"):
        st = run["stages"][stage]
        assert st["steps"] >= 1 and st["planned_steps"] >= st["steps"] - 1
        assert st["tokens_per_s"] > 0 and st["mfu"] is None  # no peak FLOP/s known on CPU
    ev = run["eval"]
    # Every item normally fits; on a loaded machine the deadline may cut the last ones, and the
    # files then say so (the budget, not the item count, is the contract).
    assert ev["test_items"] == 9 and 1 <= ev["items"] <= 9
    assert ev["complete"] == (ev["items"] == 9)
    assert ev["steps"] in reproduce.EVAL_LADDER
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == ev["items"] and metrics["options"]["steps"] == ev["steps"]
    assert all(0 <= metrics[k] <= 100 for k in ("top1", "top3", "top5"))
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == ev["items"] and all(1 <= len(r["candidates"]) <= 5 for r in records)
    table = (out / "table.md").read_text()
    assert f"{ev['steps']} sampling steps" in table and "inside the budget" in table
    assert (
        run["environment"]["device"] and run["git"]["sha"] is None or len(run["git"]["sha"]) == 40
    )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.safetensors"))
    assert math.isfinite(run["setup_s"])


def test_smoke_mode_runs_on_cpu(tmp_path, monkeypatch):
    """--smoke on CPU: the GPU checks (CUDA-only ones skipped), the data folder, and a few
    steps of both systems with their output files; smoke.json says every check passed."""
    from bench import reproduce

    data = _full_fixture(tmp_path / "data")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    argv = ["--smoke", "--benchmark", "cf", "--preset", "tiny", "--out", str(out)]
    argv += ["--data", str(data), "--device", "cpu", "--no-progress"]
    argv += ["--set", f"tokenizer.path={tmp_path / 'tok'}", "--set", "tokenizer.vocab_size=300"]
    argv += ["--set", "tokenizer.languages=[cf]"]
    assert reproduce.main(argv) == 0
    report = json.loads((out / "smoke.json").read_text())
    assert report["ok"], report["failed"]
    assert set(report["checks"]) == {
        "gpu_paths",
        "data",
        "pipeline_codefusion",
        "pipeline_t5-baseline",
    }
    gpu = report["checks"]["gpu_paths"]["checks"]
    assert gpu["kernels"] == "skipped" and gpu["training"] == "ok"
    for arch in ("codefusion", "t5-baseline"):
        run = report["checks"][f"pipeline_{arch}"]
        assert all(s["steps"] == reproduce.SMOKE_STEPS for s in run["stages"].values())
        assert run["eval"]["items"] == reproduce.SMOKE_ITEMS
    assert [p.name for p in out.iterdir()] == ["smoke.json"]


def test_generation_stops_before_a_batch_that_would_pass_the_deadline():
    from types import SimpleNamespace

    from eval.harness import generate_all

    class Slow:
        def generate(self, prompts, k, seed, allow_empty, **options):
            time.sleep(0.05)
            return [[p] for p in prompts]

    examples = [SimpleNamespace(prompt=f"p{i}") for i in range(40)]
    out = generate_all(Slow(), examples, k=1, batch_size=4, progress=False)
    assert len(out) == 40
    out = generate_all(
        Slow(), examples, k=1, batch_size=4, progress=False, deadline=time.monotonic() + 0.18
    )
    assert 4 <= len(out) < 40 and len(out) % 4 == 0  # whole batches, the first always
