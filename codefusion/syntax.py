"""Does a program parse? One check per language, for syntax-aware ranking (``syntax_rank``) and
the validity column of the evaluation alike.

Nothing here executes code: Python is parsed with ``ast``, Bash with bashlex, CF rules with our
own parser (:mod:`codefusion.cfrules`).
"""

from __future__ import annotations

import ast
import warnings

LANGUAGES = ("python", "bash", "cf")


def is_valid(code: str, language: str) -> bool:
    """Whether ``code`` parses in ``language``, surrounding whitespace aside (an empty Bash
    command does not). Never raises for any string; an unknown language is a ``ValueError``."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}: choose one of {', '.join(LANGUAGES)}")
    if not isinstance(code, str):
        return False
    code = code.strip()
    if language == "python":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences and the like
                ast.parse(code)
            return True
        except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError...
            return False
    if language == "bash":
        import bashlex

        if not code:
            return False
        try:
            bashlex.parse(code)
            return True
        except Exception:  # bashlex raises many error types (and sometimes plain ones)
            return False
    from codefusion.cfrules import is_valid as parses

    return parses(code)
