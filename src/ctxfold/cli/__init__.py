"""The ``ctxfold`` command line. Logic lives in the library; each verb is one module here.

A verb module (any module of this package whose name does not start with ``_``) has a
``register(verbs)`` function that adds its sub-parser to ``verbs`` (an ``argparse``
sub-parsers object) and sets ``run`` (a function of the parsed arguments returning the exit
code) as its default. A new verb is one new file: it is found at start-up.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from ctxfold.cli._common import EXIT_USAGE, Parser, one_line
from ctxfold.errors import CtxfoldError

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "EXIT_USAGE", "build_parser", "main", "one_line"]

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # as a shell reports a command ended by SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    """The ``ctxfold`` parser, with every verb module's sub-parser."""
    parser = Parser(prog="ctxfold", description="Recursive Language Models.")
    verbs = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ctxfold`` command; returns the exit code."""
    _safe_streams()
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except CtxfoldError as exc:
        print(f"ctxfold: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ctxfold: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of our output left (``ctxfold ask ... | head -1``)
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _safe_streams() -> None:
    """Text that cannot be encoded (a lone surrogate in a model's answer) is written escaped
    rather than lost in a traceback."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush raises nothing more."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


def _entry() -> None:  # pragma: no cover - console script shim
    # SIGPIPE keeps Python's default (ignored, raising BrokenPipeError): restoring the OS default
    # would let a write to a dead sandbox worker's pipe kill the command silently.
    sys.exit(main())
