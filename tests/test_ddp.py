"""Training on several processes: Lightning's DDP on CPU (gloo, two processes) through both
stages and the exports between them, every epoch sharded by rank, and kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.fixtures import write_fixture_data
from tests.ddp_probe import weights_digest
from tests.test_resume import _env, _tensors
from train.resume import ResumableSampler

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
# Rows after the held-out share: 8 distinct snippets - 2 = 6 (3 per rank, one batch of 3);
# 32 pairs less one program's 4 rows held out = 28 (14 per rank, two batches of 7). Even
# counts: the shards cover it all.
PRETRAIN = dict(max_steps=4, batch_size=3, val_fraction=0.25, val_every=2, ckpt_every=2)
FINETUNE = dict(max_steps=10, batch_size=7, val_fraction=0.125, val_every=4, ckpt_every=2)
SIZES = {"pretrain": 6, "finetune": 28}
COMMON = dict(warmup_steps=2, log_every=1, ema_decay=0.9)


def _config(root: Path, name: str) -> Path:
    stage = lambda d: json.dumps({**COMMON, **d})  # noqa: E731  (JSON is YAML)
    p = root / f"{name}.yaml"
    p.write_text(
        f"""
name: {name}
language: cf
out_dir: {root / "runs"}
data_dir: {root / "data"}
model: {{preset: tiny, code_len: 16}}
tokenizer: {{path: {root / "tok"}, vocab_size: 300, languages: [cf]}}
pretrain: {stage(PRETRAIN)}
finetune: {stage(FINETUNE)}
"""
    )
    return p


def _start(cfg: Path, probe: Path, *sets: str, nan: str = "", **popen) -> subprocess.Popen:
    """The issue's command line, through the probe; its own session, so that killing the
    process group kills every rank (Lightning's launcher starts rank 1 as a child)."""
    env = _env()
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"):
        env.pop(var, None)  # a clean launch: rank zero starts the others itself
    env["CODEFUSION_PROBE"] = str(probe)
    if nan:
        env["CODEFUSION_PROBE_NAN"] = nan
    cmd = [sys.executable, str(REPO / "tests" / "ddp_probe.py"), "--config", str(cfg)]
    cmd += ["--no-progress", "--set", "strategy=ddp", "--set", f"devices={WORLD}"]
    cmd += ["--set", "accelerator=cpu"]
    for item in sets:
        cmd += ["--set", item]
    return subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, **popen)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _finish(cfg: Path, probe: Path, *sets: str, nan: str = "") -> subprocess.CompletedProcess:
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = _start(cfg, probe, *sets, nan=nan, **pipes)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        _kill_group(proc)  # whatever of the group is left (nothing, normally)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _probe(path: Path) -> dict[int, list[dict]]:
    return {
        r: [json.loads(line) for line in (path / f"rank{r}.jsonl").read_text().splitlines()]
        for r in range(WORLD)
    }


def _passes(probe: dict[int, list[dict]], stage: str) -> dict[int, list[dict]]:
    return {
        r: [x for x in recs if x["event"] == "pass" and x["stage"] == stage]
        for r, recs in probe.items()
    }


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One uninterrupted two-process run of both stages (the reference for the resume test)."""
    from train.config import load_run_config
    from train.run import ensure_tokenizer

    root = tmp_path_factory.mktemp("ddp")
    write_fixture_data(root / "data")
    cfg = _config(root, "full")
    ensure_tokenizer(load_run_config(cfg))  # shared by every run here
    result = _finish(cfg, root / "probe-full")
    assert result.returncode == 0, result.stderr[-3000:]
    return SimpleNamespace(
        root=root, result=result, run=root / "runs" / "full", probe=_probe(root / "probe-full")
    )


def test_sampler_shards_are_disjoint_equal_complete_and_resume_per_rank():
    for n in (20, 21, 7):
        for world in (1, 2, 3, 4):
            shards = [
                list(ResumableSampler(n, seed=5, epoch=2, rank=r, world_size=world))
                for r in range(world)
            ]
            flat = [i for s in shards for i in s]
            assert len(set(flat)) == len(flat)  # no example twice in an epoch, across ranks
            assert {len(s) for s in shards} == {n // world}  # equal lengths: DDP needs them
            assert len(ResumableSampler(n, 0, rank=world - 1, world_size=world)) == n // world
            assert set(flat) <= set(range(n)) and len(flat) == n - n % world
            order = ResumableSampler(n, seed=5).order(2)
            if world == 1:
                assert shards == [order]  # one process reads the order itself, as before
            for k in range(n // world + 1):  # the first k of every rank: the first k*world
                assert sorted(i for s in shards for i in s[:k]) == sorted(order[: k * world])
            for batches in (1, 2):  # resume: skip counts the examples of all ranks together
                skip = batches * world
                resumed = [
                    list(ResumableSampler(n, 5, epoch=2, skip=skip, rank=r, world_size=world))
                    for r in range(world)
                ]
                assert resumed == [s[batches:] for s in shards]
    other = [list(ResumableSampler(20, seed=5, epoch=3, rank=r, world_size=2)) for r in (0, 1)]
    assert other != [
        list(ResumableSampler(20, seed=5, epoch=2, rank=r, world_size=2)) for r in (0, 1)
    ]
    with pytest.raises(ValueError, match="cannot be shared"):
        ResumableSampler(1, 0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank 2"):
        ResumableSampler(10, 0, rank=2, world_size=2)


def test_two_process_run_shards_every_epoch_and_exports_a_model_that_generates(ddp_run):
    from codefusion.pipeline import CodeFusion

    run, res = ddp_run.run, ddp_run.result
    # Said once, not once per rank: our log lines, the final message, the metric logs.
    assert res.stdout.count("model exported to") == 1
    assert res.stderr.count("fine-tuning data (cf train)") == 1
    for stage in ("pretrain", "finetune"):
        assert [p.name for p in (run / stage / "logs").iterdir()] == ["version_0"]
    metrics = (run / "finetune" / "logs" / "version_0" / "metrics.csv").read_text()
    assert "val_loss" in metrics.splitlines()[0] and "train/loss" in metrics.splitlines()[0]

    for stage, n in SIZES.items():
        passes = _passes(ddp_run.probe, stage)
        assert len(passes[0]) == len(passes[1]) >= 2  # epochs
        for p0, p1 in zip(passes[0], passes[1], strict=True):
            assert p0["epoch"] == p1["epoch"] and p0["world"] == p1["world"] == WORLD
            a, b = p0["indices"], p1["indices"]
            assert len(a) == len(b) == n // WORLD
            assert not set(a) & set(b) and sorted(a + b) == list(range(n))

    # Every rank starts fine-tuning from the pre-training export, the same weights.
    pre = CodeFusion.from_pretrained(run / "pretrain" / "model").model
    starts = {
        r: [x["weights"] for x in recs if x["event"] == "setup" and x["stage"] == "finetune"]
        for r, recs in ddp_run.probe.items()
    }
    assert starts == {r: [weights_digest(pre.state_dict())] for r in range(WORLD)}
    for stage in ("pretrain", "finetune"):  # and all ranks end each stage alike
        ends = [
            [x["weights"] for x in recs if x["event"] == "end" and x["stage"] == stage]
            for recs in ddp_run.probe.values()
        ]
        assert len(ends[0]) == 1 and ends[0] == ends[1]

    cf = CodeFusion.from_pretrained(run / "model")
    assert len(cf.generate("cells greater than 5", k=2, steps=4)) >= 1
    assert (run / "model" / "model.safetensors").read_bytes() == (
        run / "finetune" / "model" / "model.safetensors"
    ).read_bytes()
    fin = cf.model.state_dict()
    assert any(not torch.equal(pre.state_dict()[k], fin[k]) for k in fin)


def test_two_process_run_killed_mid_stage_resumes_to_the_same_weights(ddp_run):
    from safetensors.torch import load_file

    root = ddp_run.root
    cfg = _config(root, "cut")
    ckpt_dir = root / "runs" / "cut" / "finetune" / "checkpoints"
    proc = _start(cfg, root / "probe-cut", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while not (ckpt_dir / "last.ckpt").exists():
            assert proc.poll() is None, "the run ended before writing a fine-tuning checkpoint"
            assert time.monotonic() < deadline, "no fine-tuning checkpoint within 300 s"
            time.sleep(0.01)
    finally:
        _kill_group(proc)  # both ranks, mid-stage
    killed = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    steps = FINETUNE["max_steps"]
    assert 0 < killed["global_step"] < steps, killed["global_step"]
    assert not (root / "runs" / "cut" / "model").exists()

    resumed = _finish(cfg, root / "probe-resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("resuming finetune") == 1

    # Every rank continues from last.ckpt's position: the same epoch and skip, and the rest of
    # the shard the uninterrupted run read in that epoch.
    pos = killed["CodeFusionDataModule"]
    assert pos["world_size"] == WORLD
    epoch, done = pos["epoch"], pos["batches_done"]
    per_epoch = SIZES["finetune"] // WORLD // FINETUNE["batch_size"]
    if done == per_epoch:  # the checkpoint closed its epoch: the next one starts whole
        epoch, done = epoch + 1, 0
    first = {r: ps[0] for r, ps in _passes(_probe(root / "probe-resume"), "finetune").items()}
    full = _passes(ddp_run.probe, "finetune")
    for r in range(WORLD):
        assert (first[r]["epoch"], first[r]["skip"]) == (
            epoch,
            done * FINETUNE["batch_size"] * WORLD,
        )
        (ref,) = [p["indices"] for p in full[r] if p["epoch"] == epoch]
        assert first[r]["indices"] == ref[done * FINETUNE["batch_size"] :]

    # gloo sums two ranks' gradients exactly (a + b == b + a): the resumed run ends with the
    # uninterrupted run's weights, bit for bit, and so do EMA, optimizer and RNG states.
    a = load_file(ddp_run.run / "model" / "model.safetensors")
    b = load_file(root / "runs" / "cut" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    ca, cb = (
        torch.load(root / "runs" / n / "finetune/checkpoints/last.ckpt", weights_only=True)
        for n in ("full", "cut")
    )
    assert ca["global_step"] == cb["global_step"] == steps
    keys = (
        "state_dict",
        "current_model_state",
        "averaging_state",
        "optimizer_states",
        "rng_states_per_rank",
    )
    ta, tb = _tensors({k: ca[k] for k in keys}), _tensors({k: cb[k] for k in keys})
    assert ta.keys() == tb.keys() and len(ta) > 100
    assert [k for k in ta if not torch.equal(ta[k], tb[k])] == []
    assert ca["lr_schedulers"] == cb["lr_schedulers"]


def test_a_nan_on_one_rank_is_skipped_on_every_rank(ddp_run):
    """on_nan=skip under DDP: the verdict is global, every rank skips the same step (a rank
    stepping alone would leave the others waiting in the gradient all-reduce)."""
    root = ddp_run.root
    cfg = _config(root, "nan")
    sets = ("pretrain=null", "finetune.max_steps=4", "finetune.on_nan=skip")
    res = _finish(cfg, root / "probe-nan", *sets, nan="1:2")  # rank 1's second batch
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("non-finite loss at step 1: step skipped (1 so far)") == 1
    ends = [
        [x["weights"] for x in recs if x["event"] == "end"]
        for recs in _probe(root / "probe-nan").values()
    ]
    assert len(ends[0]) == 1 and ends[0] == ends[1]
    ckpt = torch.load(root / "runs/nan/finetune/checkpoints/last.ckpt", weights_only=True)
    adam_steps = {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert ckpt["global_step"] == 4 and adam_steps == {3.0}  # one step skipped, as on one process
    weights = _tensors({k: ckpt[k] for k in ("state_dict", "optimizer_states")})
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_rank_zero_before_the_process_group_comes_from_the_launchers_environment(monkeypatch):
    from train.dist import is_rank_zero

    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert is_rank_zero()  # one process
    cases = [
        ({"RANK": "0", "LOCAL_RANK": "0"}, True),  # torchrun
        ({"RANK": "3", "LOCAL_RANK": "1"}, False),
        ({"SLURM_PROCID": "2"}, False),
        ({"LOCAL_RANK": "1"}, False),  # a process Lightning's launcher started
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),  # another machine's first process
    ]
    for env, zero in cases:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert is_rank_zero() is zero, env


def test_other_ranks_wait_for_the_tokenizer_rank_zero_writes(
    tmp_path, monkeypatch, tiny_tokenizer, fixture_data
):
    import threading

    from train.config import RunConfig, RunConfigError, TokenizerConfig
    from train.dist import wait_until
    from train.run import ensure_tokenizer

    path = tmp_path / "tok"
    cfg = RunConfig(tokenizer=TokenizerConfig(path=str(path)), data_dir=str(tmp_path / "none"))
    monkeypatch.setenv("RANK", "1")  # not rank zero: it waits instead of training one

    def rank_zero_writes():  # as ensure_tokenizer does on rank zero: whole, then renamed
        time.sleep(0.5)
        tiny_tokenizer.save_pretrained(tmp_path / ".tok.tmp")
        os.replace(tmp_path / ".tok.tmp", path)

    writer = threading.Thread(target=rank_zero_writes)
    writer.start()
    try:
        tok = ensure_tokenizer(cfg)
    finally:
        writer.join()
    assert len(tok) == len(tiny_tokenizer)
    with pytest.raises(RunConfigError, match="share the filesystem"):
        wait_until(lambda: False, "the tokenizer", timeout_s=0.2)

    # Rank zero trains it into a temporary folder renamed into place (an empty one is fine).
    monkeypatch.delenv("RANK")
    (tmp_path / "tok2").mkdir()
    cfg = RunConfig(
        tokenizer=TokenizerConfig(path=str(tmp_path / "tok2"), vocab_size=300, languages=["cf"]),
        data_dir=str(fixture_data),
    )
    assert len(ensure_tokenizer(cfg)) == len(ensure_tokenizer(cfg))  # trained, then loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok", "tok2"]  # no temporary left
