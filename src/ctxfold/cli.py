"""The ``ctxfold`` command line: ``ask`` and ``models``. Logic lives in the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxfold.budget import Budget
from ctxfold.errors import CtxfoldError

if TYPE_CHECKING:
    from ctxfold.rlm import Result

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # as a shell reports a command ended by SIGPIPE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, no usage dump
        self.exit(
            EXIT_USAGE, f"ctxfold: error: {message} (see 'ctxfold {self.prog.split()[-1]} -h')\n"
        )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ctxfold", description="Recursive Language Models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ask = sub.add_parser("ask", help="answer a question about a large input")
    ask.add_argument("question")
    ask.add_argument(
        "--context",
        "-c",
        nargs="+",
        default=[],
        metavar="PATH",
        help="input file(s) or folder(s); '-' reads standard input",
    )
    ask.add_argument("--model", "-m", default="local", help="root model spec (default: local)")
    ask.add_argument("--sub-model", default=None, help="sub-call model spec (default: --model)")
    ask.add_argument("--trace", default=None, metavar="FILE", help="write the run's JSONL trace")
    ask.add_argument("--max-iterations", type=int, default=30, metavar="N")
    ask.add_argument("--json", action="store_true", help="print the result as JSON")
    ask.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")

    sub.add_parser("models", help="list the embedded local models and their state")

    resume = sub.add_parser("resume", help="continue a run whose host died, from its trace")
    resume.add_argument("trace", metavar="TRACE")
    resume.add_argument("--model", "-m", default=None, help="root model spec (default: recorded)")
    resume.add_argument("--sub-model", default=None)
    resume.add_argument("--json", action="store_true")
    resume.add_argument("--quiet", "-q", action="store_true")

    bench = sub.add_parser(
        "bench",
        help="run a long-context task with several methods side by side",
        description="TASK is a task name (see --list), 'perf' (scaffold speed against rlms), "
        "or 'report' (rebuild the report of --out).",
    )
    bench.add_argument("task", help="task name, 'perf' or 'report'")
    bench.add_argument("--methods", default="base,rlm", help="comma-separated (default: base,rlm)")
    bench.add_argument("--n", type=int, default=3, help="instances per length (default 3)")
    bench.add_argument("--lengths", default=None, help="comma-separated input lengths in tokens")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--model", "-m", default="local")
    bench.add_argument("--sub-model", default=None)
    bench.add_argument("--max-iterations", type=int, default=12, metavar="N")
    bench.add_argument("--out", default="runs/bench", help="results folder (default runs/bench)")
    bench.add_argument("--executor", choices=("local", "ray"), default="local")
    bench.add_argument("--ray-address", default=None, help="an existing Ray cluster")
    bench.add_argument(
        "--ray-cpus",
        type=int,
        default=None,
        metavar="N",
        help="tasks the local Ray runs at once (default: the cores, at most 4)",
    )
    bench.add_argument("--quiet", "-q", action="store_true")
    return parser


def _read_contexts(paths: list[str]) -> list[Any]:
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


def _ask(args: argparse.Namespace) -> int:
    from ctxfold._progress import Progress
    from ctxfold.rlm import RLM
    from ctxfold.trace import Trace

    budget = Budget(iterations=args.max_iterations)
    contexts = _read_contexts(args.context)
    trace = Trace(args.trace)
    with RLM(model=args.model, sub_model=args.sub_model, budget=budget) as rlm:
        progress = Progress(budget.iterations)
        if not args.quiet:
            trace.subscribe(progress)
        with progress if not args.quiet else _nothing():
            if len(contexts) == 1:
                result = rlm.run(args.question, contexts[0], trace=trace)
            else:
                result = rlm.run(args.question, contexts=contexts or None, trace=trace)
    _print_result(result, args)
    return 0 if result.answer else 1


def _print_result(result: Result, args: argparse.Namespace) -> None:
    if args.json:
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
    if not result.ready and not args.quiet:
        print(
            f"ctxfold: the run ended before the model was done ({result.stop_reason}); "
            "the answer above is its best so far",
            file=sys.stderr,
        )


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _resume(args: argparse.Namespace) -> int:
    from ctxfold.errors import UntrustedSpecError
    from ctxfold.rlm import RLM

    try:
        result = RLM.resume(args.trace, model=args.model, sub_model=args.sub_model)
    except UntrustedSpecError as exc:
        if not _confirm(f"ctxfold: {exc}.\nUse the trace's models anyway? [y/N] "):
            raise
        result = RLM.resume(
            args.trace, model=args.model, sub_model=args.sub_model, trust_trace=True
        )
    _print_result(result, args)
    return 0 if result.answer else 1


def _confirm(question: str) -> bool:
    """Ask on the terminal; ``False`` without one (a script must pass --model instead)."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    print(question, end="", file=sys.stderr, flush=True)
    try:
        return sys.stdin.readline().strip().lower() in ("y", "yes")
    except (OSError, KeyboardInterrupt):
        return False


def _models(_: argparse.Namespace) -> int:
    from ctxfold.models._weights import list_local_models

    for info in list_local_models():
        state = "verified" if info.verified else "installed" if info.installed else "not installed"
        print(f"{info.name:<28} {state:<14} {info.path or ''}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ctxfold._bench_cli import bench_command

    return bench_command(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ctxfold`` command; returns the exit code."""
    _safe_streams()
    args = _build_parser().parse_args(argv)
    handlers = {"ask": _ask, "models": _models, "bench": _bench, "resume": _resume}
    try:
        return handlers[args.command](args)
    except CtxfoldError as exc:
        print(f"ctxfold: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ctxfold: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of our output left (``ctxfold ask ... | head -1``)
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def one_line(message: str) -> str:
    """``message`` with control characters (newlines included) escaped: one line of output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


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
