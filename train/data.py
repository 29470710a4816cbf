"""Training data for both stages, as a LightningDataModule.

- Pre-training (stage 1): code snippets only. Each row is either *unconditional* (E(s) is
  replaced by noise in the objective) or *code CPD* (identifiers and keywords masked in the
  encoder's input; the target is the whole snippet), in the ratio ``uncond_ratio``.
- Fine-tuning (stage 2): (prompt, code) pairs of the benchmark's train split.
A small held-out share of the training rows is the validation set; the test split is never read.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from codefusion.batch import Batch
from codefusion.data import Example, holdout_examples, load_benchmark, load_snippets, split_holdout
from codefusion.languages import mask_code
from codefusion.tokenizer import CodeTokenizer
from train.config import RunConfigError
from train.resume import ResumableSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    prompt: str
    code: str
    uncond: bool = False


class PretrainDataset(Dataset):
    """Snippets turned into unconditional or CPD rows; the choice and the mask are seeded per
    (seed, epoch, index), so a run is reproducible and a resumed run sees the same rows."""

    def __init__(
        self,
        snippets: Sequence[str],
        lang: str,
        uncond_ratio: float,
        mask_rate: float,
        mask_token: str,
        seed: int,
    ) -> None:
        self.snippets, self.lang = list(snippets), lang
        self.uncond_ratio, self.mask_rate, self.mask_token = uncond_ratio, mask_rate, mask_token
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.snippets)

    def __getitem__(self, i: int | tuple[int, int]) -> Row:
        # (epoch, index) from EpochTagged: a persistent worker's copy of this dataset never
        # sees set_epoch, so the epoch travels with the index.
        epoch, i = i if isinstance(i, tuple) else (self.epoch, i)
        code = self.snippets[i]
        rng = random.Random(f"{self.seed}/{epoch}/{i}")
        if rng.random() < self.uncond_ratio:
            return Row("", code, uncond=True)
        return Row(mask_code(code, self.lang, self.mask_rate, rng, self.mask_token), code)


class PairDataset(Dataset):
    """(prompt, code) pairs for fine-tuning. With ``prompt_dropout`` a share of rows, drawn per
    (seed, epoch, index), is unconditional (E(s) := noise, as in pre-training): the model then
    also predicts without the prompt, which classifier-free guidance mixes in at sampling."""

    def __init__(
        self, pairs: Sequence[tuple[str, str]], prompt_dropout: float = 0.0, seed: int = 0
    ) -> None:
        self.pairs, self.prompt_dropout, self.seed, self.epoch = (
            list(pairs),
            prompt_dropout,
            seed,
            0,
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int | tuple[int, int]) -> Row:
        epoch, i = i if isinstance(i, tuple) else (self.epoch, i)
        prompt, code = self.pairs[i]
        if self.prompt_dropout and random.Random(f"{self.seed}/{epoch}/{i}").random() < (
            self.prompt_dropout
        ):
            return Row("", code, uncond=True)
        return Row(prompt, code)


class EpochTagged(Sampler[tuple[int, int]]):
    """A sampler's indices as ``(epoch, index)``: what the data of an index is depends on the
    epoch (PretrainDataset), and persistent workers hold copies of the dataset made before the
    first epoch. Lightning's ``set_epoch`` reaches the wrapped sampler through this one."""

    def __init__(self, sampler: ResumableSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class Collator:
    """Rows -> a padded ``Batch`` on the fixed code canvas. With ``bucket`` (a compiled model)
    prompts are padded to a power-of-two width (codefusion.tokenizer.prompt_bucket): a few
    fixed shapes, each compiled once, instead of one per batch's longest prompt."""

    def __init__(
        self, tokenizer: CodeTokenizer, max_prompt_len: int, code_len: int, bucket: bool = False
    ) -> None:
        self.tok, self.max_prompt_len, self.code_len = tokenizer, max_prompt_len, code_len
        self.bucket = bucket

    def __call__(self, rows: list[Row]) -> Batch:
        prompts = [r.prompt for r in rows]
        ids, mask, _ = self.tok.encode_prompts(prompts, self.max_prompt_len, self.bucket)
        code, _ = self.tok.encode_code([r.code for r in rows], self.code_len)
        return Batch(ids, mask, code, torch.tensor([r.uncond for r in rows]))


def distilled_pairs(
    teacher_dir: str, pairs: list[tuple[str, str]], batch_size: int = 32
) -> list[tuple[str, str]]:
    """Sequence-level distillation (Kim & Rush 2016), standard for non-autoregressive models:
    each training prompt paired with the teacher's top-1 (its default decoding, e.g. the T5
    baseline's beam search) instead of the gold. The held-out share keeps its gold."""
    import warnings

    from codefusion.auto import load_generator

    teacher = load_generator(teacher_dir)
    prompts = [p for p, _ in pairs]
    out: list[tuple[str, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation warnings per prompt
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            tops = teacher.generate(chunk, k=1, allow_empty=True)
            out += [(p, top[0].code if top else "") for p, top in zip(chunk, tops, strict=True)]
    same = sum(a == b for (_, a), (_, b) in zip(out, pairs, strict=True))
    log.info("distilled %d pairs from %s (%d equal to their gold)", len(out), teacher_dir, same)
    return [(p, c) for p, c in out if c.strip()]


class CodeFusionDataModule(L.LightningDataModule):
    """Data of one stage: ``stage`` is "pretrain" or "finetune"."""

    def __init__(
        self,
        stage: str,
        lang: str,
        tokenizer: CodeTokenizer,
        max_prompt_len: int,
        code_len: int,
        batch_size: int,
        uncond_ratio: float = 0.5,
        mask_rate: float = 0.3,
        val_fraction: float = 0.02,
        seed: int = 0,
        data_dir: str | None = None,
        python_corpus: str | None = None,
        num_workers: int = 0,
        prompt_dropout: float = 0.0,
        bucket_prompts: bool = False,
        distill_from: str | None = None,
    ) -> None:
        super().__init__()
        self.prompt_dropout, self.distill_from = prompt_dropout, distill_from
        self.val_examples: list[Example] = []  # fine-tuning: the held-out examples
        if stage not in ("pretrain", "finetune"):
            raise ValueError(f"unknown stage {stage!r}")
        self.stage, self.lang, self.tok = stage, lang, tokenizer
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.collate = Collator(tokenizer, max_prompt_len, code_len, bucket_prompts)
        self.kw = dict(uncond_ratio=uncond_ratio, mask_rate=mask_rate)
        self.val_fraction, self.data_dir, self.python_corpus = val_fraction, data_dir, python_corpus
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        # Data position, saved in checkpoints: the epoch and the batches of it already trained.
        self.epoch, self.batches_done = 0, 0

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.stage == "pretrain":
            # Snippet files repeat lines heavily (CF: 226K lines, 3.5K distinct): train on distinct.
            snippets = list(
                dict.fromkeys(load_snippets(self.lang, self.data_dir, self.python_corpus))
            )
            train, val = split_holdout(snippets, self.val_fraction, self.seed)
            make = lambda xs: PretrainDataset(  # noqa: E731
                xs, self.lang, mask_token=self.tok.mask_token, seed=self.seed, **self.kw
            )
            self.train_set, self.val_set = make(train), make(val)
        else:
            examples, report = load_benchmark(self.lang, "train", self.data_dir)
            log.info("fine-tuning data (%s train): %s", self.lang, report)
            train, val = holdout_examples(examples, self.val_fraction, self.seed, self.lang)
            log.info("held out %d of %d rows (whole programs)", len(val), len(examples))
            self.val_examples = val
            pairs = [(e.prompt, e.code) for e in train]
            if self.distill_from is not None:
                pairs = distilled_pairs(self.distill_from, pairs)
            self.train_set = PairDataset(pairs, self.prompt_dropout, self.seed)
            self.val_set = PairDataset([(e.prompt, e.code) for e in val])
        _, cut = self.tok.encode_code(
            [r.code for r in (self.train_set[i] for i in range(min(2000, len(self.train_set))))],
            self.collate.code_len,
        )
        if any(cut):
            log.warning(
                "%.1f%% of sampled training code is longer than the canvas and is cut",
                100 * sum(cut) / len(cut),
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if isinstance(self.train_set, (PretrainDataset, PairDataset)):
            self.train_set.epoch = epoch

    def set_position(self, epoch: int, batches_done: int) -> None:
        """Called by the LightningModule when a training batch starts (``batch_idx + 1``)."""
        self.epoch, self.batches_done = epoch, batches_done

    def _ranks(self) -> tuple[int, int]:
        """(this process's rank, number of processes); (0, 1) outside a distributed run."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def state_dict(self) -> dict[str, int]:
        # batches_done counts the batches of one rank: the position means something only for
        # the same number of processes, so it goes with it.
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "world_size": self._ranks()[1],
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved, world = int(state.get("world_size", 1)), self._ranks()[1]
        if saved != world:
            raise RunConfigError(
                f"cannot resume: the checkpoint was written by {saved} process(es) and this run "
                f"has {world}; resume with devices x num_nodes = {saved}, or pass --fresh"
            )
        self.set_epoch(int(state.get("epoch", 0)))
        self.batches_done = int(state.get("batches_done", 0))

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        # Our own generators everywhere: creating a loader's iterator must not draw from the
        # global torch RNG (its state is part of the checkpoint; see train/resume.py).
        gen = torch.Generator().manual_seed(self.seed)
        rank, world = self._ranks()
        sampler: Sampler | None = None
        drop_last = False
        if shuffle:
            # Each rank reads its own shard of the epoch (the Trainer has
            # use_distributed_sampler=False: Lightning's wrapper would reshuffle our order and
            # lose the position on resume).
            try:
                sampler = ResumableSampler(
                    len(ds), self.seed, epoch=self.epoch, rank=rank, world_size=world
                )
            except ValueError as e:
                raise RunConfigError(f"{self.stage} training set: {e}") from None
            per_rank = len(sampler)
            drop_last = per_rank >= self.batch_size
            n_batches = (
                per_rank // self.batch_size if drop_last else -(-per_rank // self.batch_size)
            )
            if 0 < n_batches <= self.batches_done:  # a checkpoint at the end of an epoch
                self.set_position(self.epoch + 1, 0)
                self.set_epoch(self.epoch)
            sampler.set_epoch(self.epoch)
            # Resume inside the epoch: the examples all ranks together had trained on.
            sampler.skip = self.batches_done * self.batch_size * world
        elif world > 1:
            # Validation is sharded too (every rank runs it, as the DDP-wrapped forward
            # requires); the module syncs its metrics. DistributedSampler pads the shards to
            # equal lengths with a few repeated rows, which are then counted twice.
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
        workers = self.num_workers
        if shuffle and workers > 0:
            # Tokenising and masking a batch of 512+ rows takes tens of milliseconds of Python,
            # longer than a GPU step: it runs in workers that live for the whole fit (restarting
            # them at every epoch would stall CF's epochs of a few steps each).
            sampler = EpochTagged(sampler)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            generator=gen,
            collate_fn=self.collate,
            num_workers=workers,
            persistent_workers=shuffle and workers > 0,
            pin_memory=workers > 0 and self._on_cuda(),  # then copied with non_blocking=True
            drop_last=drop_last,
        )

    def _on_cuda(self) -> bool:
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
