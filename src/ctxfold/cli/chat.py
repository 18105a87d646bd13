"""``ctxfold chat --context PATH ...``: question after question about a large input, in one
session (the REPL keeps its variables), at an interactive prompt."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxfold.budget import Budget
from ctxfold.cli._common import add_model_options, format_sources, one_line, read_contexts
from ctxfold.errors import CtxfoldError

if TYPE_CHECKING:
    from ctxfold.cli._progress import Progress
    from ctxfold.result import Result
    from ctxfold.rlm import RLM
    from ctxfold.session import Session
    from ctxfold.trace import Event

HELP = """Type a question, or:
  /sources     the sources the last answer cites
  /vars        the variables the REPL holds
  /reset       start over: a fresh REPL on the same inputs
  /save FILE   write the questions and answers so far to FILE (Markdown)
  /help        this text
Ctrl-D leaves; Ctrl-C stops the question being answered."""

_HISTORY_LINES = 1000


def register(verbs: Any) -> None:
    chat = verbs.add_parser("chat", help="a conversation about a large input, in the terminal")
    chat.add_argument(
        "--context",
        "-c",
        nargs="+",
        required=True,
        metavar="PATH",
        help="input file(s) or folder(s)",
    )
    add_model_options(chat)
    chat.add_argument("--trace", default=None, metavar="FILE", help="write the session's trace")
    chat.add_argument("--max-iterations", type=int, default=30, metavar="N", help="per question")
    chat.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    chat.set_defaults(run=run)


class _Chat:
    """The session and what the commands need: the last result, the questions and answers."""

    def __init__(self, rlm: RLM, contexts: list[Any], args: argparse.Namespace) -> None:
        self._rlm = rlm
        self._contexts = contexts
        self._args = args
        self._progress: Progress | None = None
        self.session = self._open()
        self.last: Result | None = None
        self.asked: list[tuple[str, Result]] = []

    def _open(self) -> Session:
        from ctxfold.trace import Trace

        trace = Trace(self._args.trace)
        trace.subscribe(self._on_event)
        if len(self._contexts) == 1:
            return self._rlm.session(self._contexts[0], trace=trace)
        return self._rlm.session(contexts=self._contexts, trace=trace)

    def _on_event(self, event: Event) -> None:
        progress = self._progress
        if progress is not None:
            progress(event)

    def ask(self, question: str) -> None:
        from ctxfold.cli._progress import Progress

        self._progress = None if self._args.quiet else Progress(self._args.max_iterations)
        try:
            with self._progress or contextlib.nullcontext():
                result = self.session.ask(question)
        finally:
            self._progress = None
        self.last = result
        self.asked.append((question, result))
        print(result.answer, flush=True)
        if not result.ready:
            print(f"(not final: {result.stop_reason})", file=sys.stderr)

    def command(self, line: str) -> None:
        name, _, rest = line.partition(" ")
        if name == "/sources":
            print(format_sources(self.last).strip() if self.last else "No answer yet.")
        elif name == "/vars":
            print(self.session.variables() or "(no variables yet)")
        elif name == "/reset":
            self.session.close()
            self.session = self._open()
            self.last = None
            print("A fresh REPL on the same inputs.")
        elif name == "/save" and rest.strip():
            self.save(Path(rest.strip()))
        elif name == "/help":
            print(HELP)
        else:
            print(f"Unknown command {one_line(line)!r}; /help lists them.", file=sys.stderr)

    def save(self, path: Path) -> None:
        blocks = []
        for question, result in self.asked:
            blocks.append(f"## {question}\n\n{result.answer}\n")
            if result.citations:
                blocks.append(format_sources(result).strip() + "\n")
        try:
            path.write_text("\n".join(blocks), encoding="utf-8")
        except OSError as exc:
            print(f"ctxfold: cannot write {one_line(str(path))}: {exc.strerror}", file=sys.stderr)
            return
        print(f"Saved {len(self.asked)} questions to {path}.")


def run(args: argparse.Namespace) -> int:
    from ctxfold.rlm import RLM

    if "-" in args.context:
        raise CtxfoldError("chat reads your questions from standard input: pass files, not '-'")
    contexts = read_contexts(args.context)
    history = _load_history() if sys.stdin.isatty() else None
    budget = Budget(iterations=args.max_iterations)
    with RLM(model=args.model, sub_model=args.sub_model, budget=budget) as rlm:
        chat = _Chat(rlm, contexts, args)
        try:
            _loop(chat)
        finally:
            chat.session.close()
            _save_history(history)
    return 0


def _loop(chat: _Chat) -> None:
    interactive = sys.stdin.isatty()
    if interactive:
        print("Ask about the input. /help lists the commands; Ctrl-D leaves.", file=sys.stderr)
    while True:
        try:
            line = input("ctxfold> " if interactive else "").strip()
        except EOFError:
            return
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if not line:
            continue
        try:
            if line.startswith("/"):
                chat.command(line)
            else:
                chat.ask(line)
        except KeyboardInterrupt:
            print("(stopped)", file=sys.stderr)
        except CtxfoldError as exc:
            print(f"ctxfold: error: {one_line(str(exc))}", file=sys.stderr)


def _history_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(state) / "ctxfold" / "chat_history"


def _load_history() -> Path | None:
    """Line editing, and the questions of earlier chats (up-arrow), where readline exists."""
    try:
        import readline
    except ImportError:  # pragma: no cover - not on every platform
        return None
    path = _history_path()
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    return path


def _save_history(path: Path | None) -> None:
    if path is None:
        return
    import readline

    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.set_history_length(_HISTORY_LINES)
        readline.write_history_file(path)
