"""Typed run events, the :class:`Trace` that holds them, and its JSONL form.

Every event is a small frozen dataclass with a ``type`` tag. A trace given a path writes each
event as one JSON line the moment it happens (and flushes), so a killed run leaves a usable file.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, ClassVar, get_type_hints

from ctxfold.errors import CtxfoldError, quoted


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events. ``t`` is seconds since the run started; ``depth`` 0 is the top run."""

    type: ClassVar[str] = "event"
    t: float = 0.0
    depth: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStart(Event):
    type: ClassVar[str] = "run_start"
    run_id: str
    question: str
    model: str
    sub_model: str
    budget: dict[str, Any]
    contexts: list[str]
    isolation: str = ""
    version: str = ""
    # What `ctxfold resume` needs to rebuild the run: the model specs as given, and where each
    # input can be loaded from again (ContextSpec dicts).
    model_spec: str = ""
    sub_model_spec: str = ""
    inputs: list[dict[str, Any]] = field(default_factory=list)
    schema: dict[str, Any] | None = None  # the JSON schema of a typed answer
    # A session's questions are runs of one trace: its id, and the question's number from 0.
    session: str = ""
    index: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Compaction(Event):
    """The root conversation passed the compaction threshold: the turns before the last
    exchange were replaced by ``summary``, notes the root model wrote of them."""

    type: ClassVar[str] = "compaction"
    turn: int
    before_chars: int
    after_chars: int
    summary: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RootPrompt(Event):
    """The messages a root model starts from (system prompt, demonstration, task message),
    so that its whole conversation can be read back from the trace (training data, audits)."""

    type: ClassVar[str] = "root_prompt"
    messages: list[dict[str, Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResume(Event):
    """A resumed run continues here, after replaying ``turns`` completed turns."""

    type: ClassVar[str] = "run_resume"
    turns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RootRequest(Event):
    type: ClassVar[str] = "root_request"
    turn: int
    messages: int
    chars: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RootResponse(Event):
    type: ClassVar[str] = "root_response"
    turn: int
    text: str
    model: str
    input_tokens: int
    output_tokens: int
    latency_s: float
    cache_hit: bool = False  # the reply came from the response cache


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell(Event):
    type: ClassVar[str] = "cell"
    turn: int
    index: int
    code: str
    stdout: str
    stderr: str
    error: str | None
    timed_out: bool
    restarted: bool
    duration_s: float
    restored: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class SubcallStart(Event):
    type: ClassVar[str] = "subcall_start"
    call_id: int
    kind: str
    model: str
    prompt_chars: int
    prompt_preview: str
    key: str = ""  # a hash of the request, to answer it from the trace when a run is resumed
    # The messages sent, in full, when the trace records them (see subcall_messages()).
    messages: list[dict[str, str]] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubcallEnd(Event):
    type: ClassVar[str] = "subcall_end"
    call_id: int
    kind: str
    model: str
    input_tokens: int
    output_tokens: int
    latency_s: float
    response: str
    error: str | None = None
    cache_hit: bool = False  # the reply came from the response cache


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall(Event):
    """A sub-LLM's tool call, nested in the sub-call ``call_id`` (``turn`` counts from 1)."""

    type: ClassVar[str] = "tool_call"
    call_id: int
    turn: int
    tool: str
    arguments: dict[str, Any]
    result: str  # a preview of what the tool returned
    error: str | None
    latency_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Feedback(Event):
    """The user message the root model got after a turn (cell output, or a nudge)."""

    type: ClassVar[str] = "feedback"
    turn: int
    content: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerUpdate(Event):
    type: ClassVar[str] = "answer_update"
    turn: int
    content: str
    ready: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Guard(Event):
    """The engine intervened: a reply without code, a refused ``ready``, a restored name..."""

    type: ClassVar[str] = "guard"
    turn: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRestart(Event):
    type: ClassVar[str] = "worker_restart"
    turn: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetStop(Event):
    type: ClassVar[str] = "budget_stop"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEnd(Event):
    type: ClassVar[str] = "run_end"
    answer: str
    ready: bool
    stop_reason: str
    usage: dict[str, Any]
    seconds: float
    # The answer's citations (ctxfold.Citation fields and ``where``), quoted from the input.
    citations: list[dict[str, Any]] = field(default_factory=list)


def _read_trace_bytes(path: str | os.PathLike[str]) -> bytes:
    """A trace file's bytes; a FIFO, device or folder is refused before it is opened."""
    try:
        info = Path(path).stat()
        if not stat.S_ISREG(info.st_mode):
            raise CtxfoldError(f"cannot read trace {quoted(path)}: not a regular file")
        return Path(path).read_bytes()
    except OSError as exc:
        raise CtxfoldError(f"cannot read trace {quoted(path)}: {exc.strerror}") from None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        RunStart,
        RunResume,
        Feedback,
        RootRequest,
        RootResponse,
        Cell,
        SubcallStart,
        SubcallEnd,
        ToolCall,
        AnswerUpdate,
        Guard,
        WorkerRestart,
        BudgetStop,
        Compaction,
        RootPrompt,
        RunEnd,
    )
}


def event_from_dict(data: Any) -> Event:
    """Rebuild an event from its JSON form, checking every field against the event's types.

    Unknown keys are ignored so old readers survive newer traces; a missing or mistyped field
    raises :class:`CtxfoldError` naming it.
    """
    if not isinstance(data, dict):
        raise CtxfoldError(f"an event must be a JSON object, not {type(data).__name__}")
    cls = EVENT_TYPES.get(data["type"]) if isinstance(data.get("type"), str) else None
    if cls is None:
        raise CtxfoldError(f"unknown trace event type {str(data.get('type'))[:40]!r}")
    hints = _field_types(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise CtxfoldError(f"a {cls.type} event has no {f.name!r} field")
            continue
        if not _fits(data[f.name], hints[f.name]):
            raise CtxfoldError(f"a {cls.type} event has a bad {f.name!r} field")
        values[f.name] = data[f.name]
    return cls(**values)


def _field_types(cls: type[Event]) -> dict[str, Any]:
    hints = _HINTS.get(cls.type)
    if hints is None:
        hints = _HINTS[cls.type] = get_type_hints(cls)
    return hints


_HINTS: dict[str, dict[str, Any]] = {}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value matches a field type of the events (str, int, float, bool, None,
    unions of those, ``list[...]`` and ``dict[str, ...]``)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(v, args[1]) for v in value.values())
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


_SUBCALL_MESSAGES: ContextVar[bool] = ContextVar("ctxfold_subcall_messages", default=False)


@contextlib.contextmanager
def subcall_messages(record: bool = True) -> Iterator[None]:
    """Traces made inside this block (in this thread or asyncio task) record every plain
    sub-call's messages in full (``SubcallStart.messages``), which ``ctxfold train export
    --turns sub`` needs; other traces keep a 200-character preview of each prompt."""
    token = _SUBCALL_MESSAGES.set(record)
    try:
        yield
    finally:
        _SUBCALL_MESSAGES.reset(token)


class Trace:
    """The events of one run, in order. Thread-safe; optionally streamed to a JSONL file.

    ``subcall_messages``: record each sub-call's messages in full (``None``: as the enclosing
    :func:`subcall_messages` block says, else not).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        append: bool = False,
        subcall_messages: bool | None = None,
    ) -> None:
        record = _SUBCALL_MESSAGES.get() if subcall_messages is None else subcall_messages
        self.subcall_messages = record
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._start = time.monotonic()
        self._sink: IO[str] | None = None
        self._listeners: list[Callable[[Event], None]] = []
        if path is not None:
            try:
                mode = "a" if append else "w"  # lone surrogates are written as \udXXX escapes
                self._sink = Path(path).open(mode, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise CtxfoldError(
                    f"cannot write trace file {quoted(path)}: {exc.strerror}"
                ) from None

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` for every event from now on (progress displays, loggers).

        Listeners run on the thread that emits; an exception in one is swallowed.
        """
        with self._lock:
            self._listeners.append(listener)

    def emit(self, event: Event) -> None:
        """Record an event (and write it out at once when the trace streams to a file)."""
        with self._lock:
            self._events.append(event)
            if self._sink is not None:
                self._sink.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
                self._sink.flush()
            listeners = list(self._listeners)
        for listener in listeners:
            with contextlib.suppress(Exception):  # a display bug must never break a run
                listener(event)

    def runs(self) -> list[list[Event]]:
        """The events of each run, split before each ``run_start`` (a session's questions are
        runs of one trace); events before the first ``run_start``, if any, come first."""
        runs: list[list[Event]] = []
        for event in self:
            if isinstance(event, RunStart) or not runs:
                runs.append([])
            runs[-1].append(event)
        return runs

    def of_type(self, cls: type[Event]) -> list[Any]:
        """The events of one class, e.g. ``trace.of_type(Cell)``."""
        return [e for e in self.events if isinstance(e, cls)]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write every event as JSONL to ``path``."""
        with Path(path).open("w", encoding="utf-8", errors="backslashreplace") as fh:
            for event in self.events:
                fh.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")

    @classmethod
    def reopen(cls, path: str | os.PathLike[str]) -> Trace:
        """Load a trace and keep writing new events to the end of the same file."""
        old = cls.load(path)
        data = _read_trace_bytes(path)
        if data and not data.endswith(b"\n"):  # drop a line torn by a killed writer
            Path(path).write_bytes(data[: data.rfind(b"\n") + 1])
        trace = cls(path, append=True)
        trace._events = old._events
        last = old._events[-1].t if old._events else 0.0
        trace._start = time.monotonic() - last
        return trace

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        """Read a JSONL trace; :class:`CtxfoldError` (one line) if it is not one.

        Lines end at ``\\n`` only: a cell may print U+2028 or U+0085, which JSON leaves as they
        are. A torn last line (a killed writer, even one cut inside a character) is skipped.
        """
        trace = cls()
        lines = _read_trace_bytes(path).split(b"\n")
        where = quoted(path)
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw.decode("utf-8"))
            except ValueError:  # not UTF-8, or not JSON
                if number == len(lines):
                    break
                raise CtxfoldError(f"{where}:{number}: not a JSON line") from None
            try:
                trace._events.append(event_from_dict(data))
            except CtxfoldError as exc:
                raise CtxfoldError(f"{where}:{number}: {exc}") from None
        return trace

    def close(self) -> None:
        with self._lock:
            if self._sink is not None:
                self._sink.close()
                self._sink = None
