"""The sandbox seam: what the engine asks of a sandbox and what it gets back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict


class ContextSpec(TypedDict):
    """How the worker loads one input variable. Made by :mod:`ctxfold.context` on the host.

    ``kind`` is one of:
      - ``"text_file"``: ``path`` is a UTF-8 file; the variable is a ``str``.
      - ``"bytes_file"``: ``path`` is any file; the variable is ``bytes``.
      - ``"json_file"``: ``path`` is a JSON file; the variable is the decoded list/dict.
      - ``"folder"``: ``path`` is a directory; the variable is ``dict[relative path, text]``
        over ``files`` (the relative paths to load, chosen by the host).
    """

    name: str
    kind: str
    path: str
    files: list[str]


@dataclass(frozen=True, slots=True)
class SubcallItem:
    """One sub-call asked for by code in the sandbox (already validated by the sandbox host)."""

    prompt: str
    system: str | None = None
    model: str | None = None
    context: Any = None  # only for kind "rlm": the child run's context (JSON-like data)
    choices: tuple[str, ...] | None = None  # only for kind "llm": the reply must be one of these
    choice_notes: tuple[str, ...] | None = None  # a description of each choice, shown with them


@dataclass(frozen=True, slots=True)
class SubcallRequest:
    """A request from the sandbox. ``kind``: ``"llm"`` (plain sub-calls), ``"rlm"`` (child RLM
    runs) or ``"budget"`` (what is left; ``items`` is empty)."""

    kind: str
    items: tuple[SubcallItem, ...]


# The engine hands the sandbox one callable that answers requests. For "llm" and "rlm" it returns
# one string per item (an error message in an item's slot when that item failed); for "budget" it
# returns a dict. It may be called from several threads at once and must not raise.
SubcallHandler = Callable[[SubcallRequest], "list[str] | dict[str, Any]"]


@dataclass(frozen=True, slots=True)
class SourceSpan:
    """A span of an input that ``answer["sources"]`` names (``cite()`` adds them), as the
    sandbox reported it: characters ``start:end`` of a text input, or lines
    ``line_start..line_end`` (from 1, both included) of file ``path`` of a folder input. Not yet
    checked against the input: :func:`ctxfold.citations.resolve` does that on the host."""

    source: str = "context"
    start: int | None = None
    end: int | None = None
    path: str | None = None
    line_start: int | None = None
    line_end: int | None = None


@dataclass(frozen=True, slots=True)
class AnswerState:
    """The in-sandbox ``answer`` dict as the engine reads it after a cell.

    ``content`` is the text form; ``value`` the content as JSON text when the code set it to a
    value (a dict, list, number ...) rather than a string, else ``None``; ``sources`` the spans
    of ``answer["sources"]``.
    """

    content: str = ""
    ready: bool = False
    value: str | None = None
    sources: tuple[SourceSpan, ...] = ()


@dataclass(slots=True)
class CellResult:
    """What running one code cell produced.

    ``stdout``/``stderr`` are already cut to the sandbox's output limit (head and tail kept, with a
    note of how much was cut). ``error`` is the exception's traceback text (cut the same way) or
    ``None``. ``timed_out``: the cell was interrupted at its time limit. ``restarted``: the worker
    died or had to be killed; a fresh one now runs and every variable the model made is lost.
    ``restored`` lists scaffold names the cell had overwritten and that were put back.
    ``answer_changed``: the cell changed ``answer`` (content or ready).
    """

    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    timed_out: bool = False
    restarted: bool = False
    duration_s: float = 0.0
    answer: AnswerState = field(default_factory=AnswerState)
    answer_changed: bool = False
    restored: list[str] = field(default_factory=list)


class Sandbox(Protocol):
    """A persistent Python REPL in which model-written code runs.

    Lifecycle: ``start`` once, ``setup`` and ``execute`` any number of times, ``close`` always
    (idempotent; no process may be left running). Variables persist across cells.
    :class:`ctxfold.sandbox.WorkerSandbox` implements all of it for a backend that starts a
    worker process speaking ctxfold's channel.
    """

    isolation: str  # a short label recorded in the trace, e.g. "process", "process+netns"

    def start(
        self,
        contexts: Sequence[ContextSpec],
        handler: SubcallHandler,
        *,
        output_limit: int = 8000,
    ) -> None: ...

    def execute(self, code: str, *, timeout: float | None = None) -> CellResult:
        """Run one cell of the model's; ``timeout`` in seconds."""
        ...

    def setup(self, code: str, *, timeout: float | None = None) -> CellResult:
        """Run ctxfold's own set-up code (``question = ...``, an extension's functions). It is
        not one of the model's cells: a sandbox that numbers cells does not count it."""
        ...

    def close(self) -> None: ...
