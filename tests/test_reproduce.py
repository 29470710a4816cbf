"""The one-command reproduction (bench/reproduce.py): a budgeted run, the slot plan, the planner
(bench/budget.py) and the offline bundle (bench/bundle.py), on CPU with tiny fixtures."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.budget import (
    EVAL_LADDER,
    Budget,
    BudgetError,
    fit_cost,
    parse_split,
    plan_eval,
    planned_steps,
)
from bench.fixtures import write_fixture_data
from bench.outputs import OUTPUTS, RUN_KEYS

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
    plan = plan_eval(100, 10, 1.0, 0.1, 0.0, 1400.0)
    assert plan.steps == 1200 and plan.complete and "all 100" in plan.note
    plan = plan_eval(100, 10, 1.0, 0.1, 0.0, 500.0)
    assert plan.steps == 400 and plan.complete and "largest" in plan.note
    plan = plan_eval(100, 10, 1.0, 0.1, 0.0, 5.0)  # not even 10 steps for all
    assert plan.steps == 10 and not plan.complete and plan.items < 100
    assert plan.predicted_s <= 5.0 or plan.items == 10  # at least one batch
    # A model that takes no steps (the baseline): every item, or the whole batches that fit.
    plan = plan_eval(100, 10, 1.0, None, 0.0, 100.0)
    assert plan.steps is None and plan.complete
    plan = plan_eval(100, 10, 1.0, None, 0.0, 5.0)
    assert plan.steps is None and plan.items == 40 and not plan.complete


# --- the offline bundle ------------------------------------------------------------------------


def _full_fixture(root: Path) -> Path:
    data = write_fixture_data(root)
    (data / "nl2bash-official-defined.json").write_text(json.dumps({"ids": [0, 1]}))
    (data / "NOTICE.md").write_text("fixture data\n")
    (data / "pretraining" / "PythonSnippets.txt").write_text("x = 1\n")
    return data


def test_the_offline_bundle_copies_the_data_and_refuses_clearly(tmp_path):
    from bench.bundle import BundleError, make_bundle

    data = _full_fixture(tmp_path / "data")
    repo = tmp_path / "repo"
    repo.mkdir()
    report = make_bundle(
        data, repo / ".offline", repo=repo, download=None, python_corpus=lambda: ["y = 2", "z = 3"]
    )
    bundle = repo / ".offline"
    assert (bundle / "data" / "benchmarks" / "CFRuleBenchmarks.json").is_file()
    assert (bundle / "data" / "nl2bash-official-defined.json").is_file()
    assert (bundle / "data" / "pretraining" / "PythonSnippets.txt").is_file()
    assert json.loads((bundle / "source.json").read_text())["python_corpus"]["snippets"] == 2
    assert "/.offline/" in (repo / ".gitignore").read_text().splitlines()
    assert report["bytes"] < 2**20 and report["gitignore_added"]
    (data / "NOTICE.md").unlink()
    with pytest.raises(BundleError, match="missing from the data folder: .*NOTICE.md"):
        make_bundle(data, repo / ".offline", repo=repo, download=None)


def test_a_copy_with_its_own_commit_reports_the_bundle_commit(tmp_path):
    """A GPU node's copy of the checkout may commit the same files under another hash: the run
    names the commit the bundle was made from, since the trees are the same."""
    from bench.environment import git_info

    def git(repo: Path, *a: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
        return subprocess.run(["git", *a], cwd=repo, env=env, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip

    repos = []
    for name, message in (("upstream", "one"), ("copy", "another")):
        repo = tmp_path / name
        repo.mkdir()
        (repo / "f.txt").write_text("same\n")
        git(repo, "init", "-q")
        git(repo, "add", "f.txt")
        git(repo, "commit", "-q", "-m", message)
        repos.append(repo)
    upstream, copy = repos
    ours = git_info(upstream)
    assert ours["sha"] != git(copy, "rev-parse", "HEAD") and ours["tree"]
    (copy / ".offline").mkdir()
    source = {"git_sha": ours["sha"], "git_tree": ours["tree"], "dirty": False}
    (copy / ".offline" / "source.json").write_text(json.dumps(source))
    assert git_info(copy)["sha"] == ours["sha"]
    (copy / "f.txt").write_text("changed\n")
    git(copy, "commit", "-qam", "changed")
    assert git_info(copy)["sha"] == git(copy, "rev-parse", "HEAD")  # another tree: its own


# --- the command --------------------------------------------------------------------------------


def test_help_and_user_errors_answer_in_one_line(tmp_path, capsys):
    from bench import reproduce

    with pytest.raises(SystemExit) as e:
        reproduce.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--budget-minutes" in out and "--smoke" in out and "--plan" in out
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
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--plan", "--budget-minutes", "5", "--parts", "cf,golf", *o])
    assert e.value.code == 2 and "unknown golf" in capsys.readouterr().err


def _tiny_argv(tmp_path: Path, data: Path) -> list[str]:
    argv = ["--preset", "tiny", "--data", str(data), "--device", "cpu", "--no-progress"]
    argv += ["--set", f"tokenizer.path={tmp_path / 'tok'}", "--set", "tokenizer.vocab_size=300"]
    return argv + ["--set", "tokenizer.languages=[cf]", "--eval-batch-size", "8"]


def _budgeted_run(tmp_path: Path, monkeypatch, seconds: float):
    from bench import reproduce

    data = write_fixture_data(tmp_path / "data")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # nothing is written into the checkout
    argv = ["--benchmark", "cf", "--budget-minutes", str(seconds / 60), "--out", str(out)]
    t0 = time.monotonic()
    assert reproduce.main(argv + _tiny_argv(tmp_path, data)) == 0
    return out, time.monotonic() - t0


@pytest.mark.timing
def test_a_budgeted_run_ends_inside_its_budget(tmp_path, monkeypatch):
    """Wall-clock against the budget: in the timing suite (pytest -m timing), not the default
    one, since a loaded machine stretches any measured time."""
    out, wall = _budgeted_run(tmp_path, monkeypatch, 25.0)
    run = json.loads((out / "run.json").read_text())
    assert wall <= 25.0 * 1.1 and run["ended_inside_budget"] and run["elapsed_s"] <= 25.0


def test_a_budgeted_run_writes_complete_files(tmp_path, monkeypatch):
    """The whole command at a 20-second budget on the fixture CF set: both stages, the
    evaluation of the test items at a stated step count, four compact files."""
    seconds = 20.0
    out, _ = _budgeted_run(tmp_path, monkeypatch, seconds)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    run = json.loads((out / "run.json").read_text())
    assert set(RUN_KEYS) <= set(run)
    assert run["budget"]["seconds"] == pytest.approx(seconds)
    for stage in ("pretrain", "finetune"):
        st = run["stages"][stage]
        # A loaded machine can reach the deadline before the planner has measured enough
        # steps to plan: the stage then says so instead of a plan.
        assert st["steps"] >= 1
        assert st.get("planned_steps", st["steps"]) >= st["steps"] - 1
        assert "planned_steps" in st or st["stopped_by"] == "deadline"
        assert st["mfu"] is None  # no peak FLOP/s known on CPU
        # tokens/s is a steady-state rate: none when the deadline came before one was measured.
        assert (st["tokens_per_s"] or 0) > 0 or "planned_steps" not in st, st
    ev = run["eval"]
    # Every item normally fits; on a loaded machine the deadline may cut the last ones, and the
    # files then say so (the budget, not the item count, is the contract).
    assert ev["test_items"] == 9 and 1 <= ev["items"] <= 9
    assert ev["complete"] == (ev["items"] == 9)
    assert ev["steps"] in EVAL_LADDER
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == ev["items"] and metrics["options"]["steps"] == ev["steps"]
    assert all(0 <= metrics[k] <= 100 for k in ("top1", "top3", "top5"))
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == ev["items"] and all(1 <= len(r["candidates"]) <= 5 for r in records)
    table = (out / "table.md").read_text()
    assert f"{ev['steps']} sampling steps" in table and "the budget" in table
    assert (
        run["environment"]["device"] and run["git"]["sha"] is None or len(run["git"]["sha"]) == 40
    )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.safetensors"))
    assert math.isfinite(run["setup_s"])


def test_smoke_mode_runs_on_cpu(tmp_path, monkeypatch):
    """--smoke on CPU: the GPU checks (CUDA-only ones skipped), the data folder, and a few
    steps of both systems with their output files; smoke.json says every check passed."""
    from bench import reproduce
    from bench.smoke import SMOKE_ITEMS, SMOKE_STEPS

    data = _full_fixture(tmp_path / "data")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert reproduce.main(["--smoke", "--out", str(out), *_tiny_argv(tmp_path, data)]) == 0
    report = json.loads((out / "smoke.json").read_text())
    assert report["ok"], report["failed"]
    status = {k: v["status"] for k, v in report["checks"].items()}
    assert status == {
        "versions": "ok",
        "kernels": "skipped",
        "sampling": "skipped",
        "training": "ok",
        "data": "ok",
        "pipeline_codefusion": "ok",
        "pipeline_t5-baseline": "ok",
    }
    for key in ("torch", "triton", "lightning", "transformers", "cuda", "device"):
        assert key in report["checks"]["versions"]
    training = report["checks"]["training"]
    assert training["precision"] == "bf16-mixed" and training["finetune_moved_weights"]
    assert training["graphs_after_warmup"] == {"pretrain": 0, "finetune": 0}
    assert training["generated"]
    for arch in ("codefusion", "t5-baseline"):
        run = report["checks"][f"pipeline_{arch}"]
        assert all(s["steps"] == SMOKE_STEPS for s in run["stages"].values())
        assert run["eval"]["items"] == SMOKE_ITEMS
    assert [p.name for p in out.iterdir()] == ["smoke.json"]


def _plan_cmd(tmp_path: Path, data: Path, out: Path, minutes: float) -> list[str]:
    cmd = [sys.executable, str(REPO / "bench" / "reproduce.py"), "--plan", "--out", str(out)]
    cmd += ["--budget-minutes", str(minutes), "--parts", "cf-ar,cf", "--no-smoke"]
    return cmd + _tiny_argv(tmp_path, data)


def test_the_plan_shares_the_time_and_records_every_part(tmp_path, monkeypatch):
    """The plan's scheduling (bench/reproduce.py: plan) with instant parts: each trained part
    gets its weight's share of the time left when it starts, less the speed benchmark's fixed
    reservation, a part below its minimum is skipped with the
    reason, a failed part does not stop the others, plan.json is rewritten after every part."""
    from bench import reproduce

    seen = []

    def part(name, args, out, seconds):
        seen.append((name, seconds))
        assert len(seen) == 1 or (args.out / "plan.json").is_file()  # written after each part
        if name == "cf-ar":
            raise RuntimeError("boom")
        out.mkdir(parents=True)
        return {"status": "done"}

    monkeypatch.setattr(reproduce, "run_part", part)
    args = reproduce.parse_args(
        ["--plan", "--budget-minutes", "6", "--out", str(tmp_path), "--no-smoke",
         "--parts", "cf,cf-ar,speed,python"]
    )  # fmt: skip
    report = reproduce.plan(args, time.monotonic())
    parts = report["parts"]
    assert [n for n, _ in seen] == ["cf", "cf-ar", "speed", "python"]
    total = (360 - reproduce.SPEED_S) * 0.97
    assert seen[0][1] == pytest.approx(total * 35 / 70, rel=0.02)  # cf: 35 of 35+20+15
    assert seen[2] == ("speed", reproduce.SPEED_S)
    assert parts["cf"]["status"] == "done" and parts["cf-ar"]["status"] == "failed"
    assert "boom" in parts["cf-ar"]["why"] and parts["python"]["status"] == "done"
    assert list(parts) == ["cf", "cf-ar", "speed", "python", "summary"]
    assert json.loads((tmp_path / "plan.json").read_text())["parts"] == parts
    args = reproduce.parse_args(
        ["--plan", "--budget-minutes", "0.5", "--out", str(tmp_path), "--no-smoke"]
    )
    report = reproduce.plan(args, time.monotonic())
    skipped = [n for n, p in report["parts"].items() if p["status"] == "skipped"]
    assert "bash" in skipped and "below its minimum" in report["parts"]["bash"]["why"]


def test_a_plan_killed_midway_keeps_every_finished_part(tmp_path):
    data = write_fixture_data(tmp_path / "data")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _plan_cmd(tmp_path, data, out, 1.1), cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        for line in proc.stdout:  # the first part's line: it has ended, files written
            if line.startswith("plan: cf-ar "):
                break
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["parts"]["cf-ar"]["status"] == "done" and "summary" not in plan["parts"]
    assert sorted(p.name for p in (out / "cf-ar").iterdir()) == sorted(OUTPUTS)
    assert json.loads((out / "cf-ar" / "run.json").read_text())["eval"]["items"] >= 1


def test_no_file_speaks_of_an_allocations_limits():
    """The project describes what any user with a GPU does, not one allocation's rules."""
    import re

    words = re.compile(r"\b(lease|files per call|per command|device time|call counts?)\b")
    files = [REPO / "README.md"]
    for top in ("codefusion", "train", "eval", "bench", "configs", "results"):
        files += [p for p in (REPO / top).rglob("*") if p.suffix in (".py", ".md", ".yaml")]
    hits = [
        f"{p.relative_to(REPO)}: {m.group(0)}"
        for p in files
        for m in words.finditer(p.read_text(encoding="utf-8").lower())
    ]
    assert not hits, hits


def test_generation_stops_before_a_batch_that_would_pass_the_deadline():
    from types import SimpleNamespace

    from codefusion.scoring.evaluate import generate_all

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
