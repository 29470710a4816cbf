"""Where one training step's time goes: ``bench/benchmark.py --profile``.

The first GPU run found the eager training step far from the GPU's capacity (results/gpu: MFU
1%, the bf16 path slower than fp32). Whether a step is bound by the host (Python, dispatch,
kernel launches) or by some slow kernel decides the remedy (compilation, CUDA graphs, fewer
ops; or that kernel), so this profiles one step after the timed ones and reports:

- ``wall_ms``: the step's wall-clock time, synchronised;
- ``device_ms``: the summed self time of the device's kernels (CPU ops' self time on a CPU);
- ``device_busy``: ``device_ms / wall_ms`` — well below 1 on a GPU means the GPU waits for the
  host: launch-bound;
- ``top``: the ops that take the most GPU time, with their calls and share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def profile_step(step: Callable[[], None], dev: torch.device, top: int = 15) -> dict[str, Any]:
    """Profile one call of ``step`` (already warmed up) on ``dev``."""
    cuda = dev.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    sync()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step()
        sync()
        wall = time.perf_counter() - t0
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    if cuda:  # kernels and copies on the device, not the CPU-side ops that launched them
        rows = [e for e in rows if e.device_type == torch.autograd.DeviceType.CUDA]
    rows.sort(key=lambda e: getattr(e, attr), reverse=True)
    device_us = sum(getattr(e, attr) for e in rows)
    return {
        "wall_ms": round(wall * 1e3, 3),
        "device_ms": round(device_us / 1e3, 3),
        "device_busy": round(device_us / 1e3 / (wall * 1e3), 4) if wall > 0 else None,
        "measured": "CUDA kernel self time" if cuda else "CPU op self time",
        "top": [
            {
                "name": e.key[:90],
                "calls": e.count,
                "ms": round(getattr(e, attr) / 1e3, 3),
                "share": round(getattr(e, attr) / device_us, 4) if device_us else None,
            }
            for e in rows[:top]
        ],
    }


def markdown(p: dict[str, Any], label: str) -> list[str]:
    """The profile as README lines."""
    lines = [
        f"## Where the {label} training step's time goes (one profiled step)",
        "",
        f"Wall {p['wall_ms']:.1f} ms; {p['measured']} {p['device_ms']:.1f} ms: the device is busy "
        f"{100 * p['device_busy']:.0f}% of the step"
        + (
            " (well below 100%: the host, not the device, sets the pace)."
            if p["device_busy"] is not None and p["device_busy"] < 0.5
            else "."
        ),  # fmt: skip
        "",
        "| op / kernel | calls | ms | share |",
        "|---|---|---|---|",
    ]
    for r in p["top"]:
        name = r["name"].replace("|", "\\|")
        lines.append(
            f"| `{name}` | {r['calls']} | {r['ms']:.2f} | {100 * (r['share'] or 0):.1f}% |"
        )
    return lines + [""]
