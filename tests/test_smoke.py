"""The GPU smoke check (bench/smoke.py) on CPU: it runs, CUDA-only checks are skipped (not
failed), and the two CUDA checks' logic runs on CPU stand-ins (the Triton interpreter; a
"graph" that replays by calling the captured function)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "bench" / "smoke.py"


def _load():
    spec = importlib.util.spec_from_file_location("codefusion_smoke", SMOKE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_smoke_runs_on_cpu_and_skips_the_cuda_checks(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, str(SMOKE), "--out", str(tmp_path), "--device", "cpu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "smoke.json").read_text())
    status = {k: v["status"] for k, v in report["checks"].items()}
    assert status == {
        "versions": "ok",
        "kernels": "skipped",
        "graph_capture": "skipped",
        "training": "ok",
    }
    assert report["ok"] and report["device"] == "cpu"
    versions = report["checks"]["versions"]
    for key in ("torch", "triton", "lightning", "transformers", "cuda", "device"):
        assert key in versions
    training = report["checks"]["training"]
    assert training["precision"] == "bf16-mixed" and training["finetune_moved_weights"]
    assert training["generated"]
    assert [p.name for p in tmp_path.iterdir()] == ["smoke.json"]  # work files cleaned up


def test_smoke_kernel_check_runs_under_the_interpreter():
    script = f"""
import sys, torch
sys.path.insert(0, {str(REPO)!r})
import importlib.util
spec = importlib.util.spec_from_file_location("s", {str(SMOKE)!r})
s = importlib.util.module_from_spec(spec); spec.loader.exec_module(s)
out = s.compare_kernels(torch.device("cpu"))
assert len(out["max_abs_error"]) == 2 * (2 * 4 + 5), out
print("OK")
"""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_smoke_graph_check_logic_with_a_stand_in_graph(monkeypatch):
    """CUDA graphs need CUDA: here capture records a stand-in whose replay calls the captured
    (eagerly compiled) step, so the check's own logic (buffers, strict mode, comparisons) runs."""
    from codefusion.sampling import graph as S

    class StandIn:
        def __init__(self, runner, model):
            self.runner, self.model = runner, model

        def replay(self):
            self.runner._run(self.model)

    def capture(self, model, warmup=2):
        self.warm_up(model, warmup)
        self.graph = StandIn(self, model)

    monkeypatch.setattr(S.DenoiseStep, "capture", capture)
    torch._dynamo.reset()
    out = _load().capture_and_compare(torch.device("cpu"), backend="eager")
    assert out["compiled"] and out["replay_vs_step_max_abs"] == 0.0
    assert out["tokens_equal_to_plain_fp32_loop"] >= 0.9 and out["graphs"] >= 1
