"""What several verbs share: the one-line-error parser, reading inputs, printing a result."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxfold.errors import CtxfoldError

if TYPE_CHECKING:
    from ctxfold.rlm import Result

EXIT_USAGE = 2


def one_line(message: str) -> str:
    """``message`` with control characters (newlines included) escaped: one line of output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class Parser(argparse.ArgumentParser):
    """Errors are one line and exit 2, with a pointer to the right ``-h``."""

    def error(self, message: str) -> Any:
        words = self.prog.split()
        where = " ".join(["ctxfold", *words[1:]])
        self.exit(EXIT_USAGE, f"ctxfold: error: {one_line(message)} (see '{where} -h')\n")


def read_contexts(paths: list[str]) -> list[Any]:
    """``--context`` values as inputs: ``-`` reads standard input (UTF-8 text), else a path."""
    contexts: list[Any] = []
    for item in paths:
        if item == "-":
            data = sys.stdin.buffer.read()
            try:
                contexts.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                raise CtxfoldError("standard input is not UTF-8 text") from None
        else:
            contexts.append(Path(item))
    return contexts


def print_result(result: Result, *, as_json: bool, quiet: bool) -> None:
    """The answer on stdout (or the whole result as JSON); a note on stderr when a budget, not
    the model, ended the run."""
    if as_json:
        payload = {
            "answer": result.answer,
            "ready": result.ready,
            "stop_reason": result.stop_reason,
            "iterations": result.iterations,
            "seconds": round(result.seconds, 3),
            "usage": result.usage.to_dict(),
        }
        print(json.dumps(payload, ensure_ascii=False))
    else:
        print(result.answer)
    if not result.ready and not quiet:
        print(
            f"ctxfold: the run ended before the model was done ({result.stop_reason}); "
            "the answer above is its best so far",
            file=sys.stderr,
        )
