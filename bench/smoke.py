"""The smoke check: every GPU-only path, the data and a few steps of both systems, before real
time is spent, in about a minute on a GPU.

    python bench/smoke.py --out DIR [--device cuda|cpu] [--data DIR] [--benchmark cf]

Checks, in order, each verdict printed and written to ``DIR/smoke.json`` the moment it ends (a
smoke killed at a time limit keeps every check that finished):

- ``versions``: the device, torch, CUDA, triton, lightning, transformers, tokenizers, Python;
- ``kernels`` (CUDA), ``sampling`` (CUDA), ``training``: bench/gpu_checks.py's checks (on CPU
  the training check compiles with dynamo's eager backend, the CUDA ones are skipped);
- ``data`` (when a data folder is given or set): every benchmark and snippet file, the NL2Bash
  list, bashlex, the scorers on the first gold answers;
- ``pipeline_codefusion``, ``pipeline_t5-baseline`` (with data): a few steps of each stage of
  the benchmark's paper config and five test items through the budgeted run's own code
  (bench/budgeted.py), at the paper size on a GPU (its batch sizes check the memory too), the
  tiny size on a CPU, the fast sampler under strict graphs.

``python bench/reproduce.py --smoke`` runs the same (:func:`run_smoke`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

SMOKE_STEPS, SMOKE_ITEMS, SMOKE_SAMPLING_STEPS = 3, 5, 4


class Skip(Exception):
    """A check that does not apply here."""


def _cuda_only(dev: torch.device, what: str) -> None:
    if dev.type != "cuda":
        raise Skip(f"{what} needs CUDA (the tests run it on CPU stand-ins)")


def check_versions(dev: torch.device, _work: Path, _opts: argparse.Namespace) -> dict[str, Any]:
    from bench.environment import versions

    return {**versions(dev), "bf16": dev.type == "cuda" and torch.cuda.is_bf16_supported()}


def check_kernels(dev: torch.device, _work: Path, _opts: argparse.Namespace) -> dict[str, Any]:
    from bench.gpu_checks import compare_kernels

    _cuda_only(dev, "the Triton kernels")
    return compare_kernels(dev)


def check_sampling(dev: torch.device, _work: Path, _opts: argparse.Namespace) -> dict[str, Any]:
    from bench.gpu_checks import capture_and_compare

    _cuda_only(dev, "CUDA graph capture")
    return capture_and_compare(dev)


def check_training(dev: torch.device, work: Path, _opts: argparse.Namespace) -> dict[str, Any]:
    from bench.gpu_checks import compiled_training

    return compiled_training(dev, work, "inductor" if dev.type == "cuda" else "eager")


def check_data(_dev: torch.device, _work: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """Every benchmark and snippet file loads, the NL2Bash list is there, bashlex imports, and
    each benchmark's scorer finds its first test items' gold correct."""
    import bashlex

    from bench.bundle import PYTHON_CORPUS
    from codefusion.data import iter_snippet_file, load_benchmark
    from codefusion.languages import LANGUAGES
    from codefusion.scoring.evaluate import find_nl2bash_subset

    data = _data(opts)
    out: dict[str, Any] = {"bashlex": getattr(bashlex, "__version__", "importable")}
    for name, lang in LANGUAGES.items():
        train = load_benchmark(name, "train", data)[0]
        test = load_benchmark(name, "test", data)[0]
        if not all(lang.correct(e.code, e.code, e.data)[0] for e in test[:SMOKE_ITEMS]):
            raise RuntimeError(f"{name}: the scorer rejects a gold answer of the first items")
        snippets = data / (PYTHON_CORPUS if lang.snippet_file is None else Path("pretraining"))
        if lang.snippet_file is not None:
            snippets = snippets / lang.snippet_file
        lines = sum(1 for _ in iter_snippet_file(snippets)) if snippets.is_file() else None
        out[name] = {"train": len(train), "test": len(test), "snippets": lines}
    subset = find_nl2bash_subset(data)
    if subset.ids is None:
        raise RuntimeError(f"NL2Bash-comparable figure unavailable: {subset.source}")
    out["nl2bash_defined"] = len(subset.ids)
    if out["python"]["snippets"] is None:
        out["python"]["snippets"] = "built from the standard library at run time"
    return out


def _data(opts: argparse.Namespace) -> Path:
    from codefusion.data import resolve_data_dir

    if opts.data is None and not os.environ.get("CODEFUSION_DATA"):
        raise Skip("no data folder given (--data or CODEFUSION_DATA)")
    return resolve_data_dir(opts.data)


def pipeline(arch: str) -> Callable[[torch.device, Path, argparse.Namespace], dict[str, Any]]:
    """A few steps of each stage and five test items through the budgeted run's own code
    (evaluation probe and plan, stage planners, export, in-place reload, harness, outputs)."""

    def check(dev: torch.device, work: Path, opts: argparse.Namespace) -> dict[str, Any]:
        from bench.budget import Budget
        from bench.budgeted import SMOKE_PROBE_STEPS, build_config, run_pipeline
        from bench.environment import peak_flops, versions
        from bench.outputs import OUTPUTS, check_outputs

        data = _data(opts)
        size = opts.preset if dev.type == "cuda" else "tiny"
        # A small tokenizer of the benchmark's own data (seconds to train), unless given: these
        # checks are about the code paths, and the config's 16K BPE is the first run's setup.
        tok = [f"tokenizer.path={work / 'tok'}", "tokenizer.vocab_size=1000"]
        tok.append(f"tokenizer.languages=[{opts.benchmark}]")
        a = argparse.Namespace(
            benchmark=opts.benchmark, size=size, architecture=arch, config=None, seed=None,
            overrides=tok + list(getattr(opts, "overrides", [])), work=None,
        )  # fmt: skip
        cfg, fractions = build_config(a, data, work, smoke=True, dev=dev)
        peak = peak_flops(versions(dev)["device"], dev.type, opts.peak_tflops)
        out = work / "results"
        out.mkdir(parents=True)
        budget = Budget(600.0)  # nominal: the step cap and the item limit end everything first
        # The sampler's graphs uncompiled here: the sampling check compiled one already.
        os.environ["CODEFUSION_COMPILE_SAMPLER"] = "0"
        stages, ev, params = run_pipeline(
            cfg, fractions, budget, dev, data, out, lambda plan: f"smoke {arch} {size}",
            opts.eval_batch_size, False, peak, cap=SMOKE_STEPS, limit=SMOKE_ITEMS,
            ladder=(SMOKE_SAMPLING_STEPS,), probe_steps=SMOKE_PROBE_STEPS,
        )  # fmt: skip
        for stage, st in stages.items():
            if st["steps"] != SMOKE_STEPS:
                raise RuntimeError(f"{stage} ran {st['steps']} steps, not {SMOKE_STEPS}")
        check_outputs(out, [n for n in OUTPUTS if n != "run.json"])
        keys = ("steps", "batch_size", "wall_s", "tokens_per_s", "mfu")
        return {
            "preset": size,
            "parameters": params,
            "stages": {s: {k: st.get(k) for k in keys} for s, st in stages.items()},
            "eval": {k: ev[k] for k in ("steps", "items", "wall_s")},
            "top5": json.loads((out / "metrics.json").read_text())["top5"],
        }

    return check


CHECKS: dict[str, Callable[[torch.device, Path, argparse.Namespace], dict[str, Any]]] = {
    "versions": check_versions,
    "kernels": check_kernels,
    "sampling": check_sampling,
    "training": check_training,
    "data": check_data,
    "pipeline_codefusion": pipeline("codefusion"),
    "pipeline_t5-baseline": pipeline("t5-baseline"),
}


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Replace ``path`` whole (a reader never sees half a file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_smoke(opts: argparse.Namespace) -> dict[str, Any]:
    """Every check (``opts``: :func:`parse_args`'s), ``opts.out/smoke.json`` rewritten after
    each; returns the report (``ok`` False when a check failed; skipped ones do not count)."""
    from bench.environment import command_line, git_info

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report: dict[str, Any] = {"command": command_line(), "git": git_info(), "device": str(dev)}
    report["checks"] = {}
    path = out / "smoke.json"
    start = time.monotonic()
    saved = {
        k: os.environ.get(k) for k in ("CODEFUSION_STRICT_GRAPHS", "CODEFUSION_COMPILE_SAMPLER")
    }
    os.environ["CODEFUSION_STRICT_GRAPHS"] = "1"  # a failed capture is an error, everywhere
    try:
        with tempfile.TemporaryDirectory(prefix="smoke-") as tmp:
            for name, check in CHECKS.items():
                t0 = time.monotonic()
                work = Path(tmp) / name
                work.mkdir()
                try:
                    entry = {"status": "ok", **check(dev, work, opts)}
                except Skip as e:
                    entry = {"status": "skipped", "reason": str(e)}
                except Exception as e:  # every failure is reported, the other checks still run
                    entry = {
                        "status": "failed",
                        "error": f"{type(e).__name__}: {e}",
                        "traceback": traceback.format_exc(limit=8),
                    }
                entry["seconds"] = round(time.monotonic() - t0, 2)
                report["checks"][name] = entry
                report["seconds"] = round(time.monotonic() - start, 2)
                write_json(path, report)
                why = entry.get("error") or entry.get("reason") or ""
                print(f"smoke: {name:22s} {entry['status']:8s} {entry['seconds']:7.2f} s  {why}")
                sys.stdout.flush()
    finally:
        for key, value in saved.items():  # as it was (the tests call this in-process)
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    report["failed"] = [n for n, c in report["checks"].items() if c["status"] == "failed"]
    report["ok"] = not report["failed"]
    write_json(path, report)
    return report


def add_smoke_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="folder for smoke.json")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if any")
    p.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    p.add_argument("--benchmark", default="cf", choices=["cf", "bash", "python"],
                   help="the pipeline checks' benchmark (default cf)")  # fmt: skip
    p.add_argument("--preset", default="paper", help="their size on a GPU (default paper)")
    p.add_argument("--eval-batch-size", type=int, default=32, help="prompts per batch")
    p.add_argument("--peak-tflops", type=float, help="the GPU's measured dense bf16 peak")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value of the pipeline checks (repeatable)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python bench/smoke.py",
        description="Check every GPU-only path, the data and a few steps of both systems; "
        "smoke.json is written as checks end. Example: python bench/smoke.py --out "
        "results/gpu/smoke --data ../shared/data/prose-codefusion",
    )
    add_smoke_args(p)
    report = run_smoke(p.parse_args(argv))
    state = "ok" if report["ok"] else f"FAILED ({', '.join(report['failed'])})"
    print(f"smoke: {state} in {report['seconds']:.0f} s")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
