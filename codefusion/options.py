"""Generation options as frozen dataclasses whose fields carry their command-line help, so that
the ``codefusion`` CLI and ``python -m eval`` derive their flags from one declaration.

A field declared with :func:`option` becomes ``--name-with-dashes`` (``type`` and ``choices``
from the declaration; a bool becomes ``--name/--no-name``, or a plain switch when its default is
False). Every flag defaults to None, "not given": only the options a user gives reach the
generator, so an option another model takes is that generator's one-line error, never silently
ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

_CLI = "cli"


def option(default: Any, help: str, *, cli: bool = True, type: Any = None, choices=None) -> Any:
    """A dataclass field with its command-line help (``cli=False``: not a flag)."""
    meta = {_CLI: cli, "help": help, "type": type, "choices": choices}
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_fields(options_cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(options_cls) if f.metadata.get(_CLI)]


def add_option_flags(
    parser: argparse.ArgumentParser, options_cls: type, prefix: str = "", skip: tuple = ()
) -> None:
    """One flag per CLI field of ``options_cls`` (``prefix`` starts each help text)."""
    for f in cli_fields(options_cls):
        if f.name in skip:
            continue
        meta = f.metadata
        default = "" if f.default is None or f.default is False else f" (default {f.default})"
        text = f"{prefix}{meta['help']}{default}"
        if meta["type"] is bool:
            if f.default is False:
                parser.add_argument(flag_name(f.name), action="store_true", default=None, help=text)
            else:
                parser.add_argument(
                    flag_name(f.name),
                    action=argparse.BooleanOptionalAction,
                    default=None,
                    help=text,
                )
            continue
        parser.add_argument(
            flag_name(f.name), type=meta["type"], choices=meta["choices"], default=None, help=text
        )


def given_options(args: argparse.Namespace, *options_classes: type) -> dict[str, Any]:
    """The options of ``options_classes`` that the command line gave, by field name."""
    out: dict[str, Any] = {}
    for cls in options_classes:
        for f in cli_fields(cls):
            value = getattr(args, f.name, None)
            if value is not None:
                out[f.name] = value
    return out


class Parser(argparse.ArgumentParser):
    """argparse, answering a bad command line in one line (``error: ...``, exit 2) like every
    other user mistake, instead of the usage block."""

    def error(self, message: str):  # type: ignore[override]
        import sys

        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
