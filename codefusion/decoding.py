"""The generation options of the autoregressive baseline (codefusion/baseline.py) and of the
masked diffusion model (codefusion/masked.py), apart from the models so that the command line
reads their flags without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from codefusion.options import option

MODES = ("beam", "sample")
ORDERS = ("random", "confidence")  # codefusion/absorbing.py: which masked positions go first


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


@dataclass(frozen=True)
class UnmaskingOptions:
    """The masked diffusion model's generation options (codefusion/absorbing.py: ``unmask``)."""

    steps: int | None = option(None, "unmasking steps; default one per canvas position", type=int)
    order: str = option(
        "random",
        "which masked positions are unmasked first: a random order (MDLM) or the most "
        "confident (MaskGIT)",
        choices=ORDERS,
    )
