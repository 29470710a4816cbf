"""The user-facing model: ``CodeFusion.from_pretrained(dir).generate(prompts, k=5)``.

A model directory holds ``config.json`` (CodeFusionConfig), ``model.safetensors`` (weights;
never pickle) and the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from codefusion.config import CodeFusionConfig, ConfigError
from codefusion.errors import GenerationError, ModelLoadError
from codefusion.model import CodeFusionModel, attention_mask
from codefusion.sampler import Known, SampleOutput, sample
from codefusion.schedule import SqrtSchedule
from codefusion.syntax import is_valid
from codefusion.tokenizer import CodeTokenizer, TokenizerError

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def check_model_dir(path: str | Path) -> Path:
    """The directory as a Path, or a ``ModelLoadError`` naming what is missing from it."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist")
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        missing.append("tokenizer.json")
    if missing:
        raise ModelLoadError(f"model directory {path} is missing {', '.join(missing)}")
    return path


def check_vocab(vocab_size: int, tokenizer: CodeTokenizer, path: Path) -> None:
    if vocab_size != len(tokenizer):
        raise ModelLoadError(
            f"{path / CONFIG_FILE}: vocab_size {vocab_size} does not match the tokenizer's {len(tokenizer)}"
        )


def load_weights(model: torch.nn.Module, path: Path, device: str | torch.device) -> None:
    """``model.safetensors`` of ``path`` into ``model`` (strict); a ``ModelLoadError`` otherwise."""
    from safetensors.torch import load_model

    try:
        load_model(model, str(path / WEIGHTS_FILE), strict=True, device=str(device))
    except Exception as e:  # safetensors raises its own error types; RuntimeError on mismatch
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"{path / WEIGHTS_FILE}: weights do not load into the model of {CONFIG_FILE} ({first})"
        ) from None


def check_prompts(prompts: str | Sequence[str], allow_empty: bool) -> list[str]:
    """Prompts as a list; a ``GenerationError`` for any that cannot be generated from."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise GenerationError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise GenerationError(f"prompt {i} is a {type(p).__name__}, not text")
        if not p.strip() and not allow_empty:
            raise GenerationError(f"prompt {i} is empty")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. bytes decoded with surrogateescape
            raise GenerationError(
                f"prompt {i} is not valid Unicode text (lone surrogates)"
            ) from None
    return prompts


LENGTH_MODES = ("free", "predicted")


def length_known(lengths: torch.Tensor, code_len: int, eos_id: int, pad_id: int) -> Known:
    """Given positions for draws of fixed lengths [N]: ``</s>`` at the length, pad after it."""
    pos = torch.arange(code_len, device=lengths.device)[None]  # [1, C]
    ln = lengths[:, None]
    tokens = torch.where(pos == ln, eos_id, pad_id).long()
    return Known(mask=pos >= ln, tokens=tokens)


@dataclass(frozen=True)
class Candidate:
    """One generated program and the model's own score (mean token log-probability)."""

    code: str
    score: float


def build_model(
    cfg: CodeFusionConfig, tokenizer: CodeTokenizer, encoder_path: str | Path | None = None
) -> CodeFusionModel:
    """A fresh model for a tokenizer; E from a local T5-family checkpoint if one is given."""
    cfg.vocab_size, cfg.pad_id, cfg.eos_id = len(tokenizer), tokenizer.pad_id, tokenizer.eos_id
    encoder = None
    if encoder_path is not None:
        from transformers import T5EncoderModel

        try:
            encoder = T5EncoderModel.from_pretrained(str(encoder_path), local_files_only=True)
        except Exception as e:
            raise ModelLoadError(f"{encoder_path}: cannot load a T5 encoder ({e})") from None
        if encoder.get_input_embeddings().num_embeddings != len(tokenizer):
            encoder.resize_token_embeddings(len(tokenizer))
        cfg.encoder = encoder.config.to_dict()
    return CodeFusionModel(cfg, encoder)


class CodeFusion:
    """A trained CodeFusion model with its tokenizer and schedule, ready to generate."""

    def __init__(self, model: CodeFusionModel, tokenizer: CodeTokenizer) -> None:
        if model.config.vocab_size != len(tokenizer):
            raise ModelLoadError(
                f"config vocab_size {model.config.vocab_size} does not match the tokenizer's {len(tokenizer)}"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = model.config
        self.schedule = SqrtSchedule(cfg.diffusion_steps, cfg.schedule_offset).to(self.device)

    @property
    def config(self) -> CodeFusionConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> CodeFusion:
        self.model.to(device)
        self.schedule.to(device)
        return self

    # --- save / load -------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.save(path / CONFIG_FILE)
        save_model(self.model, str(path / WEIGHTS_FILE))
        self.tokenizer.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> CodeFusion:
        """Load a model directory; every problem is a ``ModelLoadError`` naming the file."""

        path = check_model_dir(path)
        try:
            cfg = CodeFusionConfig.load(path / CONFIG_FILE)
            tokenizer = CodeTokenizer.from_pretrained(path)
        except (ConfigError, TokenizerError) as e:
            raise ModelLoadError(str(e)) from None
        check_vocab(cfg.vocab_size, tokenizer, path)
        model = CodeFusionModel(cfg)
        load_weights(model, path, device)
        return cls(model.to(device), tokenizer)

    # --- generation --------------------------------------------------------------------------

    @torch.no_grad()
    def sample_draws(
        self,
        prompts: Sequence[str],
        num_draws: int,
        steps: int | None = None,
        seed: int = 0,
        eta: float = 0.0,
        clamp: bool = False,
        cache_cross_kv: bool = True,
        trace_at: set[int] | None = None,
        allow_empty: bool = False,
        fast: bool | None = None,
        length: str | None = None,
        length_candidates: int = 3,
    ) -> SampleOutput:
        """Raw draws for each prompt: ``num_draws`` consecutive rows per prompt.

        ``fast`` (default: True on CUDA, False on CPU) replays one CUDA-graph-captured bf16
        denoising step per step (see ``codefusion.sampler``); on CPU it is the plain loop.
        ``length="predicted"`` (models with a length head): draw ``j`` of a prompt gets the
        ``(j mod length_candidates)``-th most likely length from the head, and its end token is
        fixed there (the positions from it on are given: ``</s>`` then pad). ``length=None``:
        "predicted" for a model with a length head, else "free" (N places the end token).
        """
        if length is None:
            length = "free" if self.model.length_head is None else "predicted"
        if length not in LENGTH_MODES:
            raise GenerationError(
                f"length must be one of {', '.join(LENGTH_MODES)}, not {length!r}"
            )
        if length == "predicted" and self.model.length_head is None:
            raise GenerationError("length='predicted' needs a model trained with a length head")
        if length_candidates < 1:
            raise GenerationError(f"length_candidates must be at least 1, got {length_candidates}")
        if fast is None:
            fast = self.device.type == "cuda"
        prompts = check_prompts(prompts, allow_empty)
        cfg = self.config
        ids, mask, truncated = self.tokenizer.encode_prompts(prompts, cfg.max_prompt_len)
        for i, cut in enumerate(truncated):
            if cut:
                warnings.warn(
                    f"prompt {i} is longer than {cfg.max_prompt_len} tokens and was truncated",
                    stacklevel=3,
                )
        dev = self.device
        enc = self.model.encode(ids.to(dev), mask.to(dev))  # once per call, not per draw
        known = None
        if length == "predicted":
            lengths = self.draw_lengths(enc, mask.to(dev), num_draws, length_candidates)
            known = length_known(lengths, cfg.code_len, cfg.eos_id, cfg.pad_id)
        enc = enc.repeat_interleave(num_draws, dim=0)
        # No mask at all when no prompt position is padding (one prompt, or prompts of one
        # length): SDPA can then take its flash kernel. Decided on the host copy: no sync.
        cross_mask = (
            None
            if bool(mask.all())
            else attention_mask(mask.to(dev)).repeat_interleave(num_draws, dim=0)
        )
        gen = torch.Generator(device=dev).manual_seed(seed)
        return sample(
            self.model,
            self.schedule,
            enc,
            cross_mask,
            gen,
            steps=steps,
            eta=eta,
            clamp=clamp,
            cache_cross_kv=cache_cross_kv,
            trace_at=trace_at,
            fast=fast,
            known=known,
        )

    def draw_lengths(
        self, enc: torch.Tensor, mask: torch.Tensor, num_draws: int, candidates: int
    ) -> torch.Tensor:
        """[P * num_draws] code lengths: the length head's top ``candidates`` (1..C-1 tokens,
        most likely first), repeated over each prompt's draws."""
        c = self.config.code_len
        logits = self.model.length_logits(enc, mask)[:, 1:c]  # lengths 1..C-1 leave room for </s>
        top = logits.topk(min(candidates, c - 1), dim=-1).indices + 1  # [P, m]
        pick = torch.arange(num_draws, device=top.device) % top.shape[1]
        return top[:, pick].flatten()

    def generate(
        self,
        prompts: str | Sequence[str],
        k: int = 5,
        num_draws: int | None = None,
        steps: int | None = None,
        seed: int = 0,
        eta: float = 0.0,
        clamp: bool = False,
        syntax_rank: str | None = None,
        allow_empty: bool = False,
        fast: bool | None = None,
        length: str | None = None,
        length_candidates: int = 3,
    ) -> list[Candidate] | list[list[Candidate]]:
        """Top-k programs per prompt, best first, duplicates removed.

        ``num_draws`` noise draws (default ``2k``) run in one batch; candidates are ranked by the
        model's own mean token log-probability, never by a reference. ``steps`` None uses all T
        diffusion steps; fewer are respaced (DDIM). ``syntax_rank`` ("python", "bash" or "cf")
        moves candidates that do not parse below those that do. The same seed gives the same
        output. A single prompt string returns one list; a list of prompts, a list of lists.
        ``fast`` (default: True on CUDA, False on CPU): the CUDA-graph bf16 sampler, from the
        same noise as the plain loop (bf16 rounding can still change a close token choice).
        """
        single = isinstance(prompts, str)
        num_draws = 2 * k if num_draws is None else num_draws
        if k < 1:
            raise GenerationError(f"k must be at least 1, got {k}")
        if num_draws < k:
            raise GenerationError(f"k={k} is larger than the number of noise draws ({num_draws})")
        if steps is not None and not 1 <= steps <= self.config.diffusion_steps:
            raise GenerationError(
                f"steps must be between 1 and {self.config.diffusion_steps}, got {steps}"
            )
        plist = check_prompts(prompts, allow_empty)
        out = self.sample_draws(
            plist,
            num_draws,
            steps=steps,
            seed=seed,
            eta=eta,
            clamp=clamp,
            allow_empty=allow_empty,
            fast=fast,
            length=length,
            length_candidates=length_candidates,
        )
        results = [
            rank_candidates(
                [
                    self.tokenizer.decode(r)
                    for r in out.tokens[i * num_draws : (i + 1) * num_draws].tolist()
                ],
                out.scores[i * num_draws : (i + 1) * num_draws].tolist(),
                k,
                syntax_rank,
            )
            for i in range(len(plist))
        ]
        return results[0] if single else results


def rank_candidates(
    codes: Sequence[str], scores: Sequence[float], k: int, syntax_rank: str | None = None
) -> list[Candidate]:
    """Dedupe (keeping each program's best score), sort by score, optionally parse-first; top k."""
    best: dict[str, float] = {}
    for code, score in zip(codes, scores, strict=True):
        if code not in best or score > best[code]:
            best[code] = score
    ranked = sorted(best.items(), key=lambda kv: -kv[1])
    if syntax_rank is not None:
        ranked.sort(key=lambda kv: not is_valid(kv[0], syntax_rank))  # stable: parse-first
    return [Candidate(code, score) for code, score in ranked[:k]]
