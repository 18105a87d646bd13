"""Typed run events, the :class:`Trace` that holds them, and its JSONL form.

Every event is a small frozen dataclass with a ``type`` tag. A trace given a path writes each
event as one JSON line the moment it happens (and flushes), so a killed run leaves a usable file.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, ClassVar

from ctxfold.errors import CtxfoldError


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
        RunEnd,
    )
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from its JSON form; unknown keys are ignored so old readers survive."""
    cls = EVENT_TYPES.get(str(data.get("type")))
    if cls is None:
        raise CtxfoldError(f"unknown trace event type {data.get('type')!r}")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class Trace:
    """The events of one run, in order. Thread-safe; optionally streamed to a JSONL file."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, append: bool = False) -> None:
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
                raise CtxfoldError(f"cannot write trace file {path}: {exc.strerror}") from None

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
        data = Path(path).read_bytes()
        if data and not data.endswith(b"\n"):  # drop a line torn by a killed writer
            Path(path).write_bytes(data[: data.rfind(b"\n") + 1])
        trace = cls(path, append=True)
        trace._events = old._events
        last = old._events[-1].t if old._events else 0.0
        trace._start = time.monotonic() - last
        return trace

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        """Read a JSONL trace. A torn last line (a killed writer) is skipped."""
        trace = cls()
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CtxfoldError(f"cannot read trace {path}: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break
                raise CtxfoldError(f"{path}:{number}: not a JSON line") from None
            trace._events.append(event_from_dict(data))
        return trace

    def close(self) -> None:
        with self._lock:
            if self._sink is not None:
                self._sink.close()
                self._sink = None
