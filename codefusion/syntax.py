"""Does a program parse? One check per language, for syntax-aware ranking (``syntax_rank``) and
the validity column of the evaluation alike (the language registry, :mod:`codefusion.languages`,
names each language's).

Nothing here executes code: Python is parsed with ``ast``, Bash with bashlex, CF rules with our
own parser (:mod:`codefusion.cfrules`). Each check takes any string, surrounding whitespace
aside, and never raises.
"""

from __future__ import annotations

import ast
import warnings


def python_parses(code: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences and the like
            ast.parse(code.strip())
        return True
    except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError...
        return False


def bash_parses(code: str) -> bool:
    """bashlex parses it (an empty command does not)."""
    import bashlex

    code = code.strip()
    if not code:
        return False
    try:
        bashlex.parse(code)
        return True
    except Exception:  # bashlex raises many error types (and sometimes plain ones)
        return False


def cf_parses(code: str) -> bool:
    from codefusion.cfrules import is_valid

    return is_valid(code.strip())
