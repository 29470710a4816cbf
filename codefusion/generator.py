"""What every generator of this project shares: its model directory, the request checks and the
top-k ranking. A generator (:class:`~codefusion.pipeline.CodeFusion`, the autoregressive
:class:`~codefusion.baseline.ARBaseline`) is a model, its tokenizer and a draw step:

    generate(prompts, k=5, num_draws=None, seed=0, syntax_rank=None, allow_empty=False, **options)
      1. checks the request: prompts, k, num_draws, and ``options`` against the generator's own
         ``Options`` dataclass (an unknown name or a bad value is a ``GenerationError``)
      2. encodes the prompts (a prompt longer than the encoder's window is cut, with a warning)
      3. draws ``num_draws`` sequences per prompt and scores them: :meth:`Generator.draw`, the
         one step each generator implements
      4. ranks each prompt's draws: duplicates removed (best score kept), best score first,
         parse-first with ``syntax_rank``, top k

A model directory holds ``config.json`` (the model's config; ``"architecture"`` names the
generator class, none meaning CodeFusion: see :mod:`codefusion.auto`), ``model.safetensors``
(never pickle) and the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from codefusion.config import ConfigError
from codefusion.errors import GenerationError, ModelLoadError

if TYPE_CHECKING:  # imported where used: the CLI checks a model directory before loading torch
    import torch
    from torch import Tensor

    from codefusion.tokenizer import CodeTokenizer

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
TRAINING_FILE = "training.json"  # how the export was trained (train/run.py); optional
DEFAULT_ARCHITECTURE = "codefusion"  # a config.json without "architecture"


class Draws(NamedTuple):
    """What a draw step returns: ``num_draws`` consecutive rows per prompt."""

    tokens: Tensor  # [P * num_draws, L] canvas ids (decoded up to the first end or pad token)
    scores: Tensor  # [P * num_draws] the model's own score of each


@dataclass(frozen=True)
class Candidate:
    """One generated program and the model's own score (mean token log-probability)."""

    code: str
    score: float


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


def read_config(path: Path) -> dict[str, Any]:
    """A model directory's config.json as a dict; a ``ModelLoadError`` naming the file."""
    file = path / CONFIG_FILE
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{file}: cannot read model config ({e})") from None
    if not isinstance(d, dict):
        raise ModelLoadError(f"{file}: model config must be a JSON object")
    return d


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0/C1 controls but tab, newline


def check_prompts(prompts: str | Sequence[str], allow_empty: bool) -> list[str]:
    """Prompts as a list; a ``GenerationError`` for any that cannot be generated from. Control
    characters (NUL, escape ...) are removed, with a warning: the data's prompts have none."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise GenerationError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise GenerationError(f"prompt {i} is a {type(p).__name__}, not text")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. bytes decoded with surrogateescape
            raise GenerationError(
                f"prompt {i} is not valid Unicode text (lone surrogates)"
            ) from None
        if _CONTROL.search(p):
            n = len(_CONTROL.findall(p))
            warnings.warn(f"prompt {i}: {n} control character(s) removed", stacklevel=3)
            prompts[i] = p = _CONTROL.sub("", p)
        if not p.strip() and not allow_empty:
            raise GenerationError(f"prompt {i} is empty")
    return prompts


def resolve_device(name: str | None) -> str:
    """``--device``: None picks CUDA when there is one, else the CPU; ``cpu``, ``cuda`` or
    ``cuda:N`` must exist here. A ``UserError`` in one line otherwise."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m is None:
        raise GenerationError(f"unknown device {name!r}: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise GenerationError(f"device {name} is not available: this machine has no CUDA device")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise GenerationError(f"device {name} is not available: {torch.cuda.device_count()} GPU(s)")
    return name


RANKINGS = ("score", "votes")


def rank_candidates(
    codes: Sequence[str],
    scores: Sequence[float],
    k: int,
    syntax_rank: str | None = None,
    rank: str = "score",
) -> list[Candidate]:
    """Dedupe (keeping each program's best score), sort, optionally parse-first; top k.

    ``rank="score"``: by the model's score. ``rank="votes"``: by how many draws produced the
    program (self-consistency; the model's own agreement, no reference involved), ties by
    score; for distinct draws (beam search) it is the score order."""
    if rank not in RANKINGS:
        raise GenerationError(f"rank must be one of {', '.join(RANKINGS)}, not {rank!r}")
    best: dict[str, float] = {}
    votes: dict[str, int] = {}
    for code, score in zip(codes, scores, strict=True):
        if code not in best or score > best[code]:
            best[code] = score
        votes[code] = votes.get(code, 0) + 1
    if rank == "votes":
        ranked = sorted(best.items(), key=lambda kv: (-votes[kv[0]], -kv[1]))
    else:
        ranked = sorted(best.items(), key=lambda kv: -kv[1])
    if syntax_rank is not None:
        from codefusion.languages import is_valid

        ranked.sort(key=lambda kv: not is_valid(kv[0], syntax_rank))  # stable: parse-first
    return [Candidate(code, score) for code, score in ranked[:k]]


class Generator:
    """A trained model with its tokenizer, ready to generate. Subclasses declare
    ``architecture`` (config.json's tag) and ``Options`` (a frozen dataclass of their own
    generation options), and implement the draw step and their config's (de)serialisation."""

    architecture: ClassVar[str]
    Options: ClassVar[type]

    def __init__(self, model: torch.nn.Module, tokenizer: CodeTokenizer) -> None:
        self.check_fits(model.config, tokenizer)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.trained: dict[str, Any] = {}  # training.json of a loaded model directory

    # --- what a subclass provides ------------------------------------------------------------
    @classmethod
    def config_from_dict(cls, d: dict[str, Any]) -> Any:
        """The model config from config.json's keys (``architecture`` removed); ``ConfigError``."""
        raise NotImplementedError

    def config_to_dict(self) -> dict[str, Any]:
        """What config.json holds."""
        raise NotImplementedError

    @classmethod
    def model_from_config(cls, config: Any) -> torch.nn.Module:
        """A randomly initialised model of ``config`` (weights are loaded into it)."""
        raise NotImplementedError

    def check_options(self, options: Any) -> None:
        """A ``GenerationError`` for options this model cannot serve (ranges, missing heads)."""

    def default_draws(self, k: int, options: Any) -> int:
        """``num_draws`` when the request leaves it out."""
        return 2 * k

    def draw(self, ids: Tensor, mask: Tensor, num_draws: int, seed: int, options: Any) -> Draws:
        """``num_draws`` draws per prompt of the encoded prompts ``ids``/``mask`` ([P, S] on the
        host), with their scores (anything with ``tokens`` and ``scores`` as in :class:`Draws`)."""
        raise NotImplementedError

    # --- the model ---------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_prompt_len(self) -> int:
        """Prompt tokens the encoder reads, end token included."""
        return int(self.config.max_prompt_len)

    def to(self, device: str | torch.device) -> Generator:
        self.model.to(device)
        return self

    def num_parameters(self) -> int:
        """Distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.model.parameters())

    @classmethod
    def check_fits(cls, config: Any, tokenizer: CodeTokenizer) -> None:
        """A ``ModelLoadError`` when the model's config and the tokenizer do not fit together."""
        if config.vocab_size != len(tokenizer):
            raise ModelLoadError(
                f"config vocab_size {config.vocab_size} does not match the tokenizer's "
                f"{len(tokenizer)}"
            )

    # --- save / load -------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(
            json.dumps(self.config_to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        save_model(self.model, str(path / WEIGHTS_FILE))
        self.tokenizer.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> Generator:
        """Load a model directory; every problem is a ``ModelLoadError`` naming the file."""
        from codefusion.tokenizer import CodeTokenizer, TokenizerError

        path = check_model_dir(path)
        file = path / CONFIG_FILE
        d = read_config(path)
        arch = d.pop("architecture", DEFAULT_ARCHITECTURE)
        if arch != cls.architecture:
            raise ModelLoadError(f"{file}: architecture is {arch!r}, not {cls.architecture!r}")
        try:
            config = cls.config_from_dict(d)
            tokenizer = CodeTokenizer.from_pretrained(path)
        except ConfigError as e:
            raise ModelLoadError(f"{file}: {e}") from None
        except TokenizerError as e:
            raise ModelLoadError(str(e)) from None
        try:
            cls.check_fits(config, tokenizer)  # before the weights: a clearer message
            model = cls.model_from_config(config)
            load_weights(model, path, device)
            gen = cls(model.to(device), tokenizer)
            if (path / TRAINING_FILE).is_file():
                gen.trained = json.loads((path / TRAINING_FILE).read_text(encoding="utf-8"))
            return gen
        except ModelLoadError as e:
            msg = str(e)
            raise ModelLoadError(msg if msg.startswith(str(path)) else f"{file}: {msg}") from None

    # --- generation --------------------------------------------------------------------------
    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls.Options))

    @classmethod
    def takes(cls, name: str) -> bool:
        """Whether ``name`` is one of this generator's own options."""
        return name in cls.option_names()

    def options(self, **options: Any) -> Any:
        """``Options`` from keywords, checked; a ``GenerationError`` for an unknown name or a
        value this model cannot serve."""
        unknown = sorted(set(options) - set(self.option_names()))
        if unknown:
            raise GenerationError(
                f"{type(self).__name__} takes no option {', '.join(map(repr, unknown))} "
                f"(its options: {', '.join(self.option_names())})"
            )
        opts = self.Options(**options)
        self.check_options(opts)
        return opts

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids and mask [P, S] on the host; a warning for each prompt that was cut."""
        n = self.max_prompt_len
        ids, mask, truncated = self.tokenizer.encode_prompts(prompts, n)
        for i, cut in enumerate(truncated):
            if cut:
                warnings.warn(
                    f"prompt {i} is longer than {n} tokens and was truncated", stacklevel=3
                )
        return ids, mask

    def generate(
        self,
        prompts: str | Sequence[str],
        k: int = 5,
        num_draws: int | None = None,
        seed: int = 0,
        syntax_rank: str | None = None,
        allow_empty: bool = False,
        rank: str = "score",
        **options: Any,
    ) -> list[Candidate] | list[list[Candidate]]:
        """Top-k programs per prompt, best first, duplicates removed (steps in the module doc).

        Candidates are ranked by the model's own score (``rank="score"``) or by how many draws
        agree (``rank="votes"``), never by a reference; ``syntax_rank`` ("python", "bash" or
        "cf") moves candidates that do not parse below those that do. The
        same seed gives the same output. A single prompt string returns one list; a list of
        prompts, a list of lists. ``options``: the generator's own (``Options``)."""
        single = isinstance(prompts, str)
        if rank not in RANKINGS:
            raise GenerationError(f"rank must be one of {', '.join(RANKINGS)}, not {rank!r}")
        opts = self.options(**options)
        if k < 1:
            raise GenerationError(f"k must be at least 1, got {k}")
        num_draws = self.default_draws(k, opts) if num_draws is None else num_draws
        if num_draws < k:
            raise GenerationError(f"k={k} is larger than the number of draws ({num_draws})")
        plist = check_prompts(prompts, allow_empty)
        ids, mask = self.encode_prompts(plist)
        out = self.draw(ids, mask, num_draws, seed, opts)
        codes = [self.tokenizer.decode(r) for r in out.tokens.tolist()]
        scores = out.scores.tolist()
        n = num_draws
        results = [
            rank_candidates(
                codes[i * n : (i + 1) * n], scores[i * n : (i + 1) * n], k, syntax_rank, rank
            )
            for i in range(len(plist))
        ]
        return results[0] if single else results


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
