"""``ctxfold ask QUESTION --context PATH ...``: one run, the answer on stdout."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import webbrowser
from pathlib import Path
from typing import Any

from ctxfold.budget import Budget
from ctxfold.cli._common import (
    add_cache_option,
    add_model_options,
    print_result,
    read_contexts,
    read_schema,
)


def register(verbs: Any) -> None:
    ask = verbs.add_parser("ask", help="answer a question about a large input")
    ask.add_argument("question")
    ask.add_argument(
        "--context",
        "-c",
        nargs="+",
        default=[],
        metavar="PATH",
        help="input file(s) or folder(s); '-' reads standard input",
    )
    add_model_options(ask)
    ask.add_argument("--trace", default=None, metavar="FILE", help="write the run's JSONL trace")
    ask.add_argument("--max-iterations", type=int, default=30, metavar="N")
    ask.add_argument("--json", action="store_true", help="print the result as JSON")
    ask.add_argument(
        "--cite", action="store_true", help="print the answer's sources (where, and the quote)"
    )
    ask.add_argument(
        "--schema",
        default=None,
        metavar="FILE",
        help="a JSON-schema file the answer must fit (a typed answer, printed as JSON)",
    )
    add_cache_option(ask)
    ask.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    ask.add_argument(
        "--view",
        action="store_true",
        help="watch the run in the browser (ctxfold view on its trace); stays up until Ctrl-C",
    )
    ask.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ctxfold.cli._progress import Progress
    from ctxfold.rlm import RLM
    from ctxfold.trace import Trace

    budget = Budget(iterations=args.max_iterations)
    schema = read_schema(args.schema) if args.schema else None
    contexts = read_contexts(args.context)
    trace_path = args.trace
    viewer = None
    if args.view:
        from ctxfold.cli.view import start_viewer

        if trace_path is None:
            folder = Path(tempfile.mkdtemp(prefix="ctxfold-view-"))
            trace_path = str(folder / "run.jsonl")
        Path(trace_path).write_bytes(b"")
        viewer = start_viewer(Path(trace_path))
        print(f"ctxfold: watching the run at {viewer.url}", file=sys.stderr, flush=True)
        webbrowser.open(viewer.url)
    trace = Trace(trace_path)
    cache = None if args.cache is None else (args.cache or True)
    with RLM(model=args.model, sub_model=args.sub_model, budget=budget, cache=cache) as rlm:
        progress = Progress(budget.iterations)
        if not args.quiet:
            trace.subscribe(progress)
        with progress if not args.quiet else contextlib.nullcontext():
            if len(contexts) == 1:
                result = rlm.run(args.question, contexts[0], trace=trace, schema=schema)
            else:
                many = contexts or None
                result = rlm.run(args.question, contexts=many, trace=trace, schema=schema)
    print_result(result, as_json=args.json, quiet=args.quiet, cite=args.cite)
    if viewer is not None and sys.stdin.isatty():
        print(f"ctxfold: the run stays at {viewer.url}; Ctrl-C to leave", file=sys.stderr)
        viewer.wait()
    return 0 if result.answer else 1
