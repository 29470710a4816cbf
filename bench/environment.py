"""Where a run ran: the command, the commit, the device and the versions, and the device's
peak FLOP/s for MFU. Shared by the benchmark, the smoke check and the budgeted runs."""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Dense bf16 peaks by specification (TFLOP/s), most specific name first; ``--peak-tflops``
# gives a measured one instead.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def command_line() -> str:
    return shlex.join([Path(sys.executable).name, *sys.argv])


def git_info(repo: Path = REPO) -> dict[str, Any]:
    """The checkout's commit. A copy of the checkout (a GPU node's) may be a git repository of its
    own, whose commit names nothing upstream: when its tree is the one the offline bundle
    (bench/bundle.py) recorded in ``.offline/source.json``, the bundle's commit is reported;
    without ``.git``, the bundle's commit, said so."""

    def git(*a: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *a], cwd=repo, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    source = repo / ".offline" / "source.json"
    try:
        bundle = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        bundle = None
    sha = git("rev-parse", "HEAD")
    if sha:
        status = git("status", "--porcelain", "--untracked-files=no")
        tree = git("rev-parse", "HEAD^{tree}")
        info = {"sha": sha, "tree": tree, "dirty": bool(status), "source": "git"}
        if bundle and bundle.get("git_tree") == tree and sha != bundle.get("git_sha"):
            info.update(
                sha=bundle["git_sha"], source=f"{source} (this copy's tree is that commit's)"
            )
        return info
    if bundle:
        return {"sha": bundle.get("git_sha"), "dirty": bundle.get("dirty"), "source": str(source)}
    return {"sha": None, "dirty": None, "source": "unknown (no git, no .offline/source.json)"}


def device_name(dev) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def versions(dev) -> dict[str, Any]:
    """The device and the versions of what runs on it."""
    import lightning
    import tokenizers
    import torch
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(dev),
        "device_type": dev.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }


def peak_flops(name: str, dev_type: str, given_tflops: float | None = None) -> float | None:
    """The device's dense bf16 peak FLOP/s: ``given_tflops`` (a measured peak) if any, else
    the specification's for a GPU named in :data:`PEAK_TFLOPS`; None otherwise (CPU)."""
    if given_tflops:
        return given_tflops * 1e12
    if dev_type != "cuda":
        return None
    for key, tflops in PEAK_TFLOPS.items():
        if all(part in name for part in key.split()):
            return tflops * 1e12
    return None
