"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class UserError(ValueError):
    """Bad input from a user: a file, a flag, a prompt. The message says what and where."""


class ModelLoadError(UserError):
    """A model directory is missing files, or its files do not match each other."""


class GenerationError(UserError):
    """A generation request cannot be served as asked (empty prompt, k larger than the draws...)."""
