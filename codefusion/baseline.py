"""The autoregressive baseline: a T5 encoder-decoder trained and scored in CodeFusion's harness.

``ARBaseline`` wraps a ``transformers.T5ForConditionalGeneration`` built from a ``T5Config``
(never downloaded) with the same ``CodeTokenizer`` as CodeFusion (pad, end and mask ids from it;
the decoder starts from pad, as T5's does). A model directory holds the same files as a
CodeFusion one: ``config.json`` (the T5 sizes, ``max_prompt_len`` and ``code_len``, and
``"architecture": "t5-baseline"`` so that :func:`codefusion.auto.load_generator` can tell the two
apart), ``model.safetensors`` (never pickle) and the tokenizer files.

It is a :class:`~codefusion.generator.Generator` like CodeFusion (same ``generate``, same
``Candidate`` lists, same ranking); its draw step is T5's decoding and its options are
:class:`DecodingOptions` (``mode``, ``temperature``, ``top_p``, ``max_new_tokens``):

- ``mode="beam"`` (default): beam search with ``max(k, num_draws or k)`` beams, every beam
  returned, ranked by the beam score (sum of token log-probabilities over the length, i.e. the
  mean token log-probability, end token included), duplicates removed, top ``k``;
- ``mode="sample"``: ``num_draws`` (default ``2k``) temperature/nucleus samples, ranked by the
  model's own mean token log-probability (untempered, end token included), duplicates removed.

Presets (``AR_PRESETS``): for each CodeFusion preset, the T5 of about its size, so that a run
config trains either architecture on equal terms (``model.architecture``):

- ``paper``: T5-small's widths (d_model 512, 8 heads of 64, d_ff 2048, ReLU, tied embeddings;
  also those of CodeFusion's E) with 9 encoder and 9 decoder layers: 74.5M parameters with a
  16,384 vocabulary (CodeFusion ``paper``: 72.9M).
- ``small``: d_model 128, 4 heads, d_ff 512, 5 + 5 layers: 2.43M with a 1K vocabulary
  (CodeFusion ``small``: 2.33M).
- ``tiny``: d_model 64, 4 heads, d_ff 256, 3 + 3 layers: 0.41M with a 1K vocabulary
  (CodeFusion ``tiny``: 0.40M); CPU and tests.
"""

from __future__ import annotations

from typing import Any

import torch

from codefusion.config import ConfigError
from codefusion.decoding import MODES, DecodingOptions
from codefusion.errors import GenerationError, ModelLoadError
from codefusion.generator import Draws, Generator
from codefusion.tokenizer import CodeTokenizer, up_to_first_stop

ARCHITECTURE = "t5-baseline"

# The T5 fields a baseline's config.json holds, plus our two lengths (the same meaning as in
# CodeFusionConfig: prompt tokens incl. </s>, and code tokens incl. </s>).
_SIZE_KEYS = (  # positive integers
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
)
T5_KEYS = _SIZE_KEYS + (
    "dropout_rate",
    "layer_norm_epsilon",
    "initializer_factor",
    "feed_forward_proj",
    "pad_token_id",
    "eos_token_id",
    "decoder_start_token_id",
)
LENGTH_KEYS = ("max_prompt_len", "code_len")
CONFIG_KEYS = T5_KEYS + LENGTH_KEYS
_POSITIVE = _SIZE_KEYS + LENGTH_KEYS

_BASE: dict[str, Any] = dict(
    vocab_size=16384,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    initializer_factor=1.0,
    feed_forward_proj="relu",
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
# The T5 of about the size of each CodeFusion preset (parameters with the vocabulary of that
# preset's configs). Its lengths and dropout are the CodeFusion preset's own (baseline_config).
AR_PRESETS: dict[str, dict[str, Any]] = {
    # 74.5M with a 16K vocabulary (CodeFusion `paper`: 72.9M)
    "paper": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=9, num_decoder_layers=9, num_heads=8),
    # 2.43M with a 1K vocabulary (CodeFusion `small`: 2.33M)
    "small": dict(d_model=128, d_kv=32, d_ff=512, num_layers=5, num_decoder_layers=5, num_heads=4),
    # 0.41M with a 1K vocabulary (CodeFusion `tiny`: 0.40M): CPU and tests
    "tiny": dict(d_model=64, d_kv=16, d_ff=256, num_layers=3, num_decoder_layers=3, num_heads=4),
}


def config_from_dict(d: dict[str, Any]):
    """A ``T5Config`` (with ``max_prompt_len`` and ``code_len``) from our keys; checked."""
    from transformers import T5Config

    unknown = sorted(set(d) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"unknown baseline config keys: {', '.join(unknown)}")
    missing = [k for k in CONFIG_KEYS if k not in d]
    if missing:
        raise ConfigError(f"baseline config lacks {', '.join(missing)}")
    for k in _POSITIVE:
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"baseline config {k} must be a positive integer, not {v!r}")
    if not 0.0 <= float(d["dropout_rate"]) < 1.0:
        raise ConfigError(
            f"baseline config dropout_rate must lie in [0, 1), not {d['dropout_rate']}"
        )
    try:
        cfg = T5Config(
            **{k: d[k] for k in T5_KEYS}, tie_word_embeddings=True, is_encoder_decoder=True
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid baseline config ({e})") from None
    cfg.max_prompt_len, cfg.code_len = int(d["max_prompt_len"]), int(d["code_len"])
    return cfg


def config_to_dict(cfg) -> dict[str, Any]:
    """Our keys of a ``T5Config`` (config.json holds them after the architecture tag)."""
    return {k: getattr(cfg, k) for k in CONFIG_KEYS}


def baseline_config(name: str = "paper", **overrides: Any):
    """The ``T5Config`` of the baseline of CodeFusion's preset ``name``: its sizes from
    ``AR_PRESETS``, its prompt and code lengths and dropout from the CodeFusion preset, then
    overrides (any of ``CONFIG_KEYS``, e.g. ``code_len``)."""
    from codefusion.config import preset

    if name not in AR_PRESETS:
        raise ConfigError(
            f"unknown baseline preset {name!r}: choose one of {', '.join(AR_PRESETS)}"
        )
    cf = preset(name)
    same = dict(max_prompt_len=cf.max_prompt_len, code_len=cf.code_len, dropout_rate=cf.dropout)
    return config_from_dict({**_BASE, **same, **AR_PRESETS[name], **overrides})


def build_baseline(cfg, tokenizer: CodeTokenizer):
    """A fresh ``T5ForConditionalGeneration`` for a tokenizer (vocab, pad, end ids from it).

    ``cfg`` is a preset name or a ``T5Config`` from :func:`baseline_config`."""
    from transformers import T5ForConditionalGeneration

    d = config_to_dict(baseline_config(cfg) if isinstance(cfg, str) else cfg)
    d.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id,
        decoder_start_token_id=tokenizer.pad_id,
    )
    return T5ForConditionalGeneration(config_from_dict(d))


class ARBaseline(Generator):
    """A trained autoregressive (T5) baseline with its tokenizer, ready to generate."""

    architecture = ARCHITECTURE
    Options = DecodingOptions

    @classmethod
    def from_preset(cls, name: str, tokenizer: CodeTokenizer, **overrides: Any) -> ARBaseline:
        """A randomly initialised baseline of the size of CodeFusion's preset ``name``
        (``paper``, ``small``, ``tiny``); overrides: any of ``CONFIG_KEYS``."""
        return cls(build_baseline(baseline_config(name, **overrides), tokenizer), tokenizer)

    @classmethod
    def check_fits(cls, config: Any, tokenizer: CodeTokenizer) -> None:
        super().check_fits(config, tokenizer)
        for key, want in (
            ("pad_token_id", tokenizer.pad_id),
            ("eos_token_id", tokenizer.eos_id),
            ("decoder_start_token_id", tokenizer.pad_id),
        ):
            if getattr(config, key) != want:
                raise ModelLoadError(
                    f"config {key} {getattr(config, key)} does not match the tokenizer's {want}"
                )
        for key in LENGTH_KEYS:
            if not isinstance(getattr(config, key, None), int):
                raise ModelLoadError(f"the model's config lacks {key}")

    # --- config.json --------------------------------------------------------------------------
    @classmethod
    def config_from_dict(cls, d: dict[str, Any]):
        return config_from_dict(d)

    def config_to_dict(self) -> dict[str, Any]:
        return {"architecture": ARCHITECTURE, **config_to_dict(self.config)}

    @classmethod
    def model_from_config(cls, config: Any) -> torch.nn.Module:
        from transformers import T5ForConditionalGeneration

        return T5ForConditionalGeneration(config)

    # --- generation --------------------------------------------------------------------------
    def check_options(self, options: DecodingOptions) -> None:
        if options.mode not in MODES:
            raise GenerationError(f"mode must be 'beam' or 'sample', not {options.mode!r}")
        if not options.temperature > 0:
            raise GenerationError(f"temperature must be positive, got {options.temperature}")
        if not 0 < options.top_p <= 1:
            raise GenerationError(f"top_p must lie in (0, 1], got {options.top_p}")
        if options.max_new_tokens is not None and options.max_new_tokens < 1:
            raise GenerationError(
                f"max_new_tokens must be at least 1, got {options.max_new_tokens}"
            )

    def default_draws(self, k: int, options: DecodingOptions) -> int:
        return k if options.mode == "beam" else 2 * k

    def draw(self, ids, mask, num_draws: int, seed: int, options: DecodingOptions) -> Draws:
        """The draw step: beam search or sampling (``_draw``), the decoder start token cut."""
        o, dev = options, self.device
        max_new = self.config.code_len if o.max_new_tokens is None else o.max_new_tokens
        seqs, scores = self._draw(
            ids.to(dev), mask.to(dev), o.mode, num_draws, max_new, seed, o.temperature, o.top_p
        )
        return Draws(seqs[:, 1:], scores)

    @torch.no_grad()
    def sequence_scores(
        self, ids: torch.Tensor, mask: torch.Tensor, sequences: torch.Tensor
    ) -> torch.Tensor:
        """Mean token log-probability of generated ``sequences`` ([N, 1 + L], starting with the
        decoder start token) given encoder inputs ``ids``/``mask`` ([N, S]).

        Counted: the tokens before the first end/pad token, and that token when there is one."""
        dec_in, target = sequences[:, :-1], sequences[:, 1:]
        logits = self.model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).logits
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, target.unsqueeze(-1))[..., 0]
        before = up_to_first_stop(target, (self.tokenizer.eos_id, self.tokenizer.pad_id))
        return (logp * before).sum(1) / before.sum(1).clamp(min=1)

    @torch.no_grad()
    def _draw(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        mode: str,
        n: int,
        max_new: int,
        seed: int,
        temperature: float,
        top_p: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` consecutive sequences per prompt ([B*n, 1 + L], decoder start first) and scores."""
        from transformers import GenerationConfig

        tok = self.tokenizer
        common = dict(
            max_new_tokens=max_new,
            min_new_tokens=0,
            decoder_start_token_id=tok.pad_id,
            pad_token_id=tok.pad_id,
            eos_token_id=tok.eos_id,
            suppress_tokens=[tok.pad_id],  # never a target in training; decoding stops at it
            num_return_sequences=n,
            use_cache=True,
            return_dict_in_generate=True,
        )
        if mode == "beam":
            beam = dict(early_stopping=True, length_penalty=1.0) if n > 1 else {}  # 1: greedy
            gc = GenerationConfig(
                do_sample=False, num_beams=n, output_scores=True, **beam, **common
            )
        else:
            gc = GenerationConfig(
                do_sample=True, temperature=temperature, top_p=top_p, top_k=0, **common
            )
        dev = self.device
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, generation_config=gc, **self._cache()
            )
        seqs = out.sequences
        if mode == "beam" and getattr(out, "sequences_scores", None) is not None:
            return seqs, out.sequences_scores.float()
        rep = lambda t: t.repeat_interleave(n, dim=0)  # noqa: E731
        return seqs, self.sequence_scores(rep(ids), rep(mask), seqs)

    def _cache(self) -> dict[str, Any]:
        """An empty, lazily sized cache when the decoder's depth differs from the encoder's:
        transformers 5 sizes its default cache by ``num_layers`` (the encoder's) and fails."""
        if self.config.num_decoder_layers == self.config.num_layers:
            return {}
        try:
            from transformers.cache_utils import DynamicCache, EncoderDecoderCache
        except ImportError:  # older transformers: its default cache is fine
            return {}
        return {"past_key_values": EncoderDecoderCache(DynamicCache(), DynamicCache())}
