"""The smoke check (bench/smoke.py) on CPU: it runs within its time, CUDA-only checks are
skipped (not failed), smoke.json is written as checks end (a smoke killed midway keeps them),
the two CUDA checks' logic runs on CPU stand-ins (the Triton interpreter; a "graph" that
replays by calling the captured function), and nothing compiles after the warm-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "bench" / "smoke.py"


def test_a_smoke_killed_midway_keeps_the_checks_that_ended(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(SMOKE), "--out", str(tmp_path), "--device", "cpu"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        for line in proc.stdout:
            if line.startswith("smoke: sampling"):  # three checks have ended
                break
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert list(report["checks"]) == ["versions", "kernels", "sampling"]
    assert report["checks"]["versions"]["status"] == "ok" and "ok" not in report


def test_smoke_kernel_check_runs_under_the_interpreter():
    script = f"""
import sys, torch
sys.path.insert(0, {str(REPO)!r})
from bench.gpu_checks import compare_kernels
out = compare_kernels(torch.device("cpu"))
assert len(out["max_abs_error"]) == 2 * (2 * 4 + 5), out
print("OK")
"""
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_smoke_graph_check_logic_with_a_stand_in_graph(monkeypatch):
    """CUDA graphs need CUDA: here capture records a stand-in whose replay calls the captured
    (eagerly compiled) step, so the check's own logic (buffers, strict mode, comparisons, no
    compilation on a second call of the same shapes) runs."""
    from bench.gpu_checks import capture_and_compare
    from codefusion.sampling import graph as S

    class StandIn:
        def __init__(self, runner):
            self.runner = runner

        def replay(self):
            self.runner._run()

    def capture(self, warmup=2):
        self.warm_up(warmup)
        self.graph = StandIn(self)

    monkeypatch.setattr(S.DenoiseStep, "capture", capture)
    torch._dynamo.reset()
    out = capture_and_compare(torch.device("cpu"), backend="eager", dtype=None)
    assert out["compiled"] and out["replay_vs_step_max_abs"] == 0.0
    assert out["graphs_compiled_on_a_second_call"] == 0
    assert out["tokens_equal_to_plain_fp32_loop"] >= 0.9 and out["graphs"] >= 1
