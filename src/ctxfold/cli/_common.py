"""What several verbs share: the one-line-error parser, reading inputs, printing a result."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxfold.errors import CtxfoldError
from ctxfold.models import prepare_model

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ctxfold.result import Result
    from ctxfold.rlm import RLM

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


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``/``-m`` (default: the local model) and ``--sub-model`` (default: --model)."""
    parser.add_argument("--model", "-m", default="local", help="root model spec (default: local)")
    parser.add_argument("--sub-model", default=None, help="sub-call model spec (default: --model)")


def add_cache_option(parser: argparse.ArgumentParser) -> None:
    """``--cache [FILE]``: keep model replies on disk (the default file when no FILE)."""
    parser.add_argument(
        "--cache",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="answer repeated model calls from a response cache on disk (default file: "
        "$XDG_CACHE_HOME/ctxfold/responses.sqlite)",
    )


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


def read_schema(path: str) -> dict[str, Any]:
    """A JSON-schema file's contents (checked when the run starts)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CtxfoldError(f"cannot read the schema file {path!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise CtxfoldError(f"the schema file {path!r} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CtxfoldError(f"the schema file {path!r} must hold a JSON object (a JSON schema)")
    return data


def format_sources(result: Result) -> str:
    """The answer's sources, one block each: where (``path:line`` or ``context[a:b]``) and the
    quote, indented; or a line saying there are none."""
    if not result.citations:
        return "\nSources: none cited."
    blocks = ["", "Sources:"]
    for number, citation in enumerate(result.citations, 1):
        quote = citation.quote.rstrip("\n")
        shown = "\n".join(f"     {one_line(line)}" for line in quote.splitlines()[:20])
        more = quote.count("\n") - 19
        blocks.append(f"  [{number}] {one_line(citation.where)}")
        blocks.append(shown + (f"\n     ... ({more} more lines)" if more > 0 else ""))
    return "\n".join(blocks)


def print_result(result: Result, *, as_json: bool, quiet: bool, cite: bool = False) -> None:
    """The answer on stdout (or the whole result as JSON), then its sources with ``cite``; a
    note on stderr when a budget, not the model, ended the run."""
    if as_json:
        payload = {
            "answer": result.answer,
            "ready": result.ready,
            "stop_reason": result.stop_reason,
            "iterations": result.iterations,
            "seconds": round(result.seconds, 3),
            "usage": result.usage.to_dict(),
            "citations": [
                {k: v for k, v in asdict(c).items() if v is not None} for c in result.citations
            ],
        }
        if result.value is not None:
            payload["value"] = json.loads(result.answer)
        print(json.dumps(payload, ensure_ascii=False))
    else:
        print(result.answer)
        if cite:
            print(format_sources(result))
    if not result.ready and not quiet:
        print(
            f"ctxfold: the run ended before the model was done ({result.stop_reason}); "
            "the answer above is its best so far",
            file=sys.stderr,
        )


def serve_extra() -> None:
    """Raise a one-line :class:`CtxfoldError` when the ``serve`` extra is not installed."""
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn", "mcp") if importlib.util.find_spec(m) is None]
    if missing:
        raise CtxfoldError(
            f"this needs the serve extra ({', '.join(missing)} missing): "
            "pip install 'ctxfold[serve]'"
        )


def settle_heap(rlms: Iterable[RLM]) -> None:
    """Before a long-lived verb (``serve``, ``mcp``) starts serving: look up the prices of every
    model its RLMs may call (the price table loads on first use) and have each load its SDK
    (:func:`~ctxfold.models.prepare_model`), then freeze what start-up made (``gc.freeze()``).

    A full garbage collection holds the GIL, so every request thread waits it out. Set up as
    ``serve`` is, one walked about 157,000 objects and took 92-118 ms; frozen, those objects are
    never walked again (``benchmarks/gc_freeze.py --pauses``)."""
    for rlm in rlms:
        for model in rlm.models.values():
            getattr(model, "priced", None)
            prepare_model(model)
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
