"""Rank discipline for a run on several processes (Lightning's DDP, torchrun, a SLURM launcher).

Lightning's DDP starts the process group inside ``trainer.fit`` and its own launcher starts the
other ranks by running the whole command again, so every rank executes all of ``train.run``:
the tokenizer, both stages and the exports between them. What is written once (tokenizer,
``run_config.yaml``, exports) is written by rank zero while the others wait for it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from train.config import RunConfigError


def process_group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_rank_zero() -> bool:
    """Whether this process is global rank zero (true when there is only one process).

    Before the process group exists the launcher's environment tells: torchrun sets ``RANK``,
    SLURM ``SLURM_PROCID``, Lightning's own launcher ``NODE_RANK`` and, in the processes it
    starts, ``LOCAL_RANK``."""
    if process_group_ready():
        return dist.get_rank() == 0
    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def barrier() -> None:
    """Wait until every rank gets here; nothing to do without a process group."""
    if not process_group_ready():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def wait_until(ready: Callable[[], bool], what: str, timeout_s: float = 1800.0) -> None:
    """Poll for something rank zero writes before there is a process group to wait on.

    The timeout is Lightning's default for a collective (30 minutes); running out of it most
    likely means the ranks do not share the run's filesystem."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RunConfigError(
                f"waited {timeout_s:.0f} s for rank zero to write {what}: do all ranks share "
                "the filesystem of the run folder?"
            )
        time.sleep(0.5)


class RankZeroFilter(logging.Filter):
    """Let a handler show INFO and WARNING records from rank zero only; errors from any rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or is_rank_zero()
