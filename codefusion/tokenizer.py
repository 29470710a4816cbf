"""Tokenizer: a byte-level BPE trained with ``tokenizers``, or any local Hugging Face tokenizer.

Prompts and code share one tokenizer (as CodeFusion shares CodeT5's). Saved as a standard
``tokenizer.json`` (+ ``tokenizer_config.json``) that ``transformers.AutoTokenizer`` loads.
Code is laid on a fixed canvas: ``tokens + </s> + <pad> ...``; decoding cuts at the first
end or pad token.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from codefusion.errors import UserError

log = logging.getLogger(__name__)

PAD, EOS, UNK, MASK = "<pad>", "</s>", "<unk>", "<mask>"
SPECIAL_TOKENS = [PAD, EOS, UNK, MASK]  # ids 0..3 in a tokenizer we train


def up_to_first_stop(
    ids: torch.Tensor, stop_ids: Sequence[int], inclusive: bool = True
) -> torch.Tensor:
    """[B, L] bool: the positions of each row before its first stop token (one of ``stop_ids``),
    and that token itself when ``inclusive``. A row without a stop token is all True.

    The canvas's content is ``up_to_first_stop(ids, (pad, eos))``: the code tokens and the end
    token that decoding stops at; ``inclusive=False`` counts the code tokens alone."""
    first, *rest = stop_ids
    is_stop = ids == first
    for s in rest:
        is_stop = is_stop | (ids == s)
    is_stop = is_stop.long()
    seen = torch.cumsum(is_stop, dim=1)
    return (seen - is_stop) == 0 if inclusive else seen == 0


def prompt_bucket(prompt_len: int, max_prompt_len: int) -> int:
    """The width prompts of ``prompt_len`` tokens are padded to where shapes must stay fixed (a
    compiled training step, the sampler's CUDA graphs): the next power of two (at least 8), at
    most ``max(max_prompt_len, prompt_len)``. A few compiled graphs cover every length, and a
    prompt whose length is a bucket needs no mask."""
    bucket = 8
    while bucket < prompt_len:
        bucket *= 2
    return min(bucket, max(max_prompt_len, prompt_len))


class TokenizerError(UserError):
    """A tokenizer cannot be built or loaded, or lacks a token the model needs."""


def _pretokenizer(scheme: str):
    """How text is cut before BPE merges (nothing merges across a cut).

    - ``literal`` (the default): whitespace runs, each punctuation character and each digit are
      pieces of their own, then byte-level. A literal is then the same tokens wherever it
      stands: ``85`` in "greater than 85" and in ``GreaterThan(85)``, ``Bull`` in "'Bull'" and
      in ``TextEquals(Bull)``, so a model can copy it from the prompt. Text round-trips exactly.
    - ``bytelevel``: GPT-2's byte-level pre-tokenizer (CodeT5's kind, the paper's): the space
      before a word is fused into its first token, so `` 85`` in a prompt and ``85`` after ``(``
      in code are different tokens.
    """
    from tokenizers import Regex, pre_tokenizers

    if scheme == "bytelevel":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if scheme == "literal":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"\s+"), behavior="isolated"),
                pre_tokenizers.Punctuation(behavior="isolated"),
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise TokenizerError(f"unknown tokenizer scheme {scheme!r}: choose literal or bytelevel")


SCHEMES = ("literal", "bytelevel")


def train_bpe(
    texts: Iterable[str], vocab_size: int = 16384, min_frequency: int = 2, scheme: str = "literal"
):
    """Train a byte-level BPE with the pre-tokenizer of ``scheme``; a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pretokenizer(scheme)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, mask_token=MASK
    )


class CodeTokenizer:
    """The ids the model needs (pad, end, mask) and canvas encoding/decoding on top of an HF tokenizer."""

    def __init__(self, hf_tokenizer) -> None:
        tok = hf_tokenizer
        if tok.pad_token_id is None:
            raise TokenizerError("the tokenizer has no pad token")
        if tok.eos_token_id is None:
            raise TokenizerError("the tokenizer has no end-of-sequence token")
        if tok.mask_token_id is None:
            # CodeT5-style tokenizers may lack one: add it (the model's vocab then grows by one).
            tok.add_special_tokens({"mask_token": MASK})
        self.hf = tok

    @classmethod
    def from_pretrained(cls, path: str | Path) -> CodeTokenizer:
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise TokenizerError(f"tokenizer directory {path} does not exist")
        from transformers.utils import logging as hf_logging

        if not (path / "tokenizer.json").is_file() and not (path / "vocab.json").is_file():
            raise TokenizerError(
                f"{path}: no tokenizer.json (nor a vocab.json with merges.txt): the tokenizer "
                "files of the model directory are missing"
            )
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # transformers' own hints would bury the one line
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # transformers raises many kinds; the user needs one message
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise TokenizerError(f"{path}: cannot load a tokenizer ({first})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        return cls(tok)

    def save_pretrained(self, path: str | Path) -> None:
        self.hf.save_pretrained(str(path))

    @property
    def scheme(self) -> str | None:
        """The pre-tokenizer scheme this BPE was trained with (:func:`train_bpe`), or None for a
        tokenizer of another kind (a local CodeT5 directory)."""
        pre = getattr(getattr(self.hf, "backend_tokenizer", None), "pre_tokenizer", None)
        name = type(pre).__name__
        return {"Sequence": "literal", "ByteLevel": "bytelevel"}.get(name)

    @property
    def pad_id(self) -> int:
        return int(self.hf.pad_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.hf.eos_token_id)

    @property
    def mask_id(self) -> int:
        return int(self.hf.mask_token_id)

    @property
    def mask_token(self) -> str:
        return str(self.hf.mask_token)

    def __len__(self) -> int:
        return len(self.hf)

    def ids(self, text: str) -> list[int]:
        """Token ids of a text, no special tokens added (special-token text is recognised)."""
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def encode_prompts(
        self, prompts: Sequence[str], max_len: int, bucket: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        """Prompts -> (ids [B, S], mask [B, S], truncated flags); each ends with </s>. S is the
        longest prompt's length, or with ``bucket`` its :func:`prompt_bucket`."""
        rows, truncated = [], []
        for p in prompts:
            ids = self.ids(p)
            truncated.append(len(ids) > max_len - 1)
            rows.append(ids[: max_len - 1] + [self.eos_id])
        width = max(len(r) for r in rows)
        if bucket:
            width = prompt_bucket(width, max_len)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask, truncated

    def encode_code(self, codes: Sequence[str], length: int) -> tuple[torch.Tensor, list[bool]]:
        """Code -> canvas ids [B, length]: tokens, </s>, then <pad>; and truncated flags."""
        out = torch.full((len(codes), length), self.pad_id, dtype=torch.long)
        truncated = []
        for i, code in enumerate(codes):
            ids = self.ids(code) + [self.eos_id]
            truncated.append(len(ids) > length)
            ids = ids[:length]
            out[i, : len(ids)] = torch.tensor(ids)
        return out, truncated

    def content_length(self, ids: Sequence[int]) -> int:
        """Positions before the first end/pad token."""
        for j, i in enumerate(ids):
            if i in (self.eos_id, self.pad_id):
                return j
        return len(ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Canvas ids -> code, cut at the first end/pad token."""
        ids = list(ids)[: self.content_length(ids)]
        return self.hf.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        ).strip()


def tokenizer_corpus(
    data_dir=None, python_corpus=None, languages: Sequence[str] | None = None
) -> Iterable[str]:
    """Training text for the tokenizer: train splits (code and prompts) and pre-training snippets
    of ``languages`` (default: every benchmark), in that order.

    Test splits are never read.
    """
    from codefusion.data import load_benchmark, load_snippets
    from codefusion.languages import NAMES

    for lang in NAMES if languages is None else languages:
        examples, _ = load_benchmark(lang, "train", data_dir)
        for ex in examples:
            yield ex.code
            yield ex.prompt
        # Snippet files repeat lines heavily; the distinct ones carry the information.
        yield from dict.fromkeys(load_snippets(lang, data_dir, python_corpus))


def truncation_report(tok: CodeTokenizer, data_dir=None, length: int = 128) -> dict[str, float]:
    """Share of test code longer than ``length`` tokens (end token included), per benchmark."""
    from codefusion.data import load_benchmark
    from codefusion.languages import NAMES

    report = {}
    for lang in NAMES:
        examples, _ = load_benchmark(lang, "test", data_dir)
        _, truncated = tok.encode_code([e.code for e in examples], length)
        report[lang] = sum(truncated) / max(1, len(truncated))
    return report
