"""The autoregressive baseline's generation options (codefusion/baseline.py), apart from the
model so that the command line reads their flags without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from codefusion.options import option

MODES = ("beam", "sample")


@dataclass(frozen=True)
class DecodingOptions:
    """The baseline's generation options (see the module docstring); the CLI flags are derived
    from the fields (:mod:`codefusion.options`)."""

    mode: str = option("beam", "beam search or nucleus sampling", choices=MODES)
    temperature: float = option(1.0, "sampling temperature (mode sample)", type=float)
    top_p: float = option(0.95, "nucleus mass (mode sample)", type=float)
    max_new_tokens: int | None = option(
        None, "longest output in tokens; default the canvas it was trained on", type=int
    )
