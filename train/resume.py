"""Exact resume after a kill: a resumable sampler, RNG state helpers and an atomic CheckpointIO.

Lightning restores the model, optimizer, scheduler, callbacks (EMA included) and its loop
counters, but neither the random number generators nor the position inside an epoch of a plain
DataLoader. The pieces here fill those gaps through public hooks only:

* :class:`ResumableSampler`: the order of an epoch is a function of ``(seed, epoch)``; after a
  restore it skips the indices already consumed in that epoch. Its length stays the full epoch,
  so Lightning's batch counters (restored from the checkpoint) end the epoch at the right batch.
  Under DDP every rank reads its own shard of that order. The DataModule carries ``(epoch,
  batches consumed, world size)`` in its ``state_dict``.
* :func:`capture_rng_state` / :func:`restore_rng_state`: torch (CPU and CUDA), Python ``random``
  and NumPy, stored as tensors and plain Python values only, so that checkpoints load with
  ``torch.load(weights_only=True)``. :func:`seed_rank` gives each DDP rank its own stream.
* :class:`AtomicCheckpointIO`: writes to a temporary file in the same folder, fsyncs it, then
  ``os.replace``s it over the target (and fsyncs the folder): a kill during a save leaves the
  previous file intact. Loads always use ``weights_only=True``; an unreadable file is a
  :class:`CheckpointLoadError` naming it.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import Sampler

from codefusion.errors import UserError


class CheckpointLoadError(UserError):
    """A checkpoint file exists but cannot be read (truncated, corrupted, not a checkpoint)."""


# --------------------------------------------------------------------------------- sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed derived from ``(seed, epoch)``; stable across processes and platforms."""
    digest = hashlib.sha256(f"codefusion/{seed}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ResumableSampler(Sampler[int]):
    """Indices ``0..n-1``, shuffled per epoch as a function of ``(seed, epoch)`` only, and
    sharded by rank.

    Every rank computes the same order of the epoch and takes positions ``rank, rank + world,
    rank + 2 world, ...`` of it. Strided rather than contiguous shards: the first ``k`` indices
    of all ranks together are the first ``k * world`` of the order, so a global batch is one
    slice of it and one process (``world_size=1``) reads the order itself. Shards have equal
    lengths, ``n // world``: DDP needs the same number of batches on every rank, so the last
    ``n % world`` indices of each epoch's order (others every epoch) are left out of it.

    ``skip`` counts the examples of the epoch all ranks together had already trained on (a
    killed run's; a multiple of ``world_size``): each rank leaves the first ``skip //
    world_size`` of its shard out of the *next* pass; later passes are whole again. ``len()`` is
    always the whole shard: Lightning counts the batches of a resumed epoch from its restored
    progress, not from zero.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        shuffle: bool = True,
        epoch: int = 0,
        skip: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of {world_size} processes")
        if n < world_size:
            raise ValueError(f"{n} examples cannot be shared among {world_size} processes")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.skip = epoch, max(0, skip)
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before each epoch
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        """The whole epoch's order, the same on every rank."""
        if not self.shuffle:
            return list(range(self.n))
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=gen).tolist()

    def shard(self, epoch: int) -> list[int]:
        """This rank's part of the epoch's order."""
        order = self.order(epoch)
        return order[self.rank : len(self) * self.world_size : self.world_size]

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip // self.world_size, 0
        return iter(self.shard(self.epoch)[skip:])

    def __len__(self) -> int:
        return self.n // self.world_size


def rank_seed(seed: int, rank: int) -> int:
    """A 32-bit seed for rank ``rank`` of a run seeded with ``seed`` (NumPy takes 32 bits)."""
    digest = hashlib.sha256(f"codefusion/{seed}/rank{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_rank(seed: int, rank: int) -> None:
    """Seed torch (every device), Python ``random`` and NumPy for one rank of a DDP run.

    Lightning seeds every rank alike; the ranks then draw the same diffusion steps and noise
    for different rows, and a global batch holds only ``batch_size`` distinct draws."""
    s = rank_seed(seed, rank)
    torch.manual_seed(s)
    random.seed(s)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with lightning
        return
    np.random.seed(s)


# ------------------------------------------------------------------------------ RNG states


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU/CUDA, Python, NumPy) as tensors and plain values."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with lightning
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = {
        "kind": str(kind),
        "keys": [int(k) for k in keys],
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global RNG states from :func:`capture_rng_state`'s output (missing parts: kept)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "numpy" in state:
        import numpy as np

        npst = state["numpy"]
        np.random.set_state(
            (
                npst["kind"],
                np.asarray(npst["keys"], dtype=np.uint32),
                npst["pos"],
                npst["has_gauss"],
                npst["cached"],
            )
        )


# ----------------------------------------------------------------------------- CheckpointIO


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints written atomically and read with ``weights_only=True``.

    Every file Lightning's ModelCheckpoint writes goes through :meth:`save_checkpoint`,
    ``last.ckpt`` included (``save_last=True`` saves it as a file, not as a link or a copy).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        # weights_only is always True here: our checkpoints hold tensors and plain values only.
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointLoadError(f"{path}: cannot read the checkpoint ({first})") from None
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise CheckpointLoadError(f"{path}: not a Lightning checkpoint")
        return ckpt
