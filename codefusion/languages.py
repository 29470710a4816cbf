"""Syntax checks per language, used for syntax-aware ranking and the validity rate.

Nothing here executes code: Python is parsed with ``ast``, Bash with bashlex, CF rules with our
own parser.
"""

from __future__ import annotations

import ast
import warnings

LANGUAGES = ("python", "bash", "cf")


def is_valid(code: str, lang: str) -> bool:
    """Whether ``code`` parses in ``lang``; never raises for any string."""
    if lang == "python":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ast.parse(code)
            return True
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False
    if lang == "bash":
        import bashlex

        if not code.strip():
            return False
        try:
            bashlex.parse(code)
            return True
        except Exception:  # bashlex raises many error types (and sometimes plain ones)
            return False
    if lang == "cf":
        from codefusion.cfrules import is_valid as cf_valid

        return cf_valid(code)
    raise ValueError(f"unknown language {lang!r}: choose one of {', '.join(LANGUAGES)}")
