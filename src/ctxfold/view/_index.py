"""A trace file read incrementally into what the viewer shows: runs, turns, sub-calls.

The file may be growing (a run being written): each :meth:`TraceIndex.refresh` reads only the
bytes added since the last one, and a torn last line waits for its end. Nothing here runs or
interprets what a model wrote; it is kept as text.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxfold.errors import CtxfoldError
from ctxfold.trace import EVENT_TYPES

_PREVIEW = 160
_FIRST_LINE_MAX = 1 << 22  # a run_start longer than this is not one


def check_trace(path: Path) -> None:
    """Raise :class:`NotATrace` (or ``OSError``) unless ``path`` holds a trace or nothing yet."""
    with path.open("rb") as fh:
        first = fh.readline(_FIRST_LINE_MAX)
    if not first.strip() or (not first.endswith(b"\n") and len(first) < _FIRST_LINE_MAX):
        return  # nothing yet, or a first line being written
    try:
        event = json.loads(first)
    except ValueError:
        event = None
    if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
        raise NotATrace(f"{path} is not a ctxfold trace (its first line is not a trace event)")


class NotATrace(CtxfoldError):
    """The file is not a ctxfold trace (its first line is not a trace event)."""


@dataclass
class _Turn:
    turn: int
    t: float = 0.0
    reply: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    cells: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)  # feedback, guards, answer ...

    def summary(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "t": self.t,
            "preview": self.reply[:_PREVIEW],
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_s": self.latency_s,
            "cells": len(self.cells),
            "errors": sum(1 for c in self.cells if c.get("error") or c.get("timed_out")),
            "guards": [n["text"] for n in self.notes if n["kind"] == "guard"],
        }

    def details(self) -> dict[str, Any]:
        return {**self.summary(), "reply": self.reply, "cells": self.cells, "notes": self.notes}


@dataclass
class _Run:
    index: int
    start: dict[str, Any]
    end: dict[str, Any] | None = None
    turns: dict[int, _Turn] = field(default_factory=dict)
    subcalls: dict[int, dict[str, Any]] = field(default_factory=dict)
    child_turns: int = 0
    compactions: list[dict[str, Any]] = field(default_factory=list)
    prompt: list[dict[str, Any]] = field(default_factory=list)  # the root's first messages
    last_t: float = 0.0

    def turn(self, number: int) -> _Turn:
        if number not in self.turns:
            self.turns[number] = _Turn(number)
        return self.turns[number]

    @property
    def seconds(self) -> float:
        """The run's wall time: as it ended, or so far."""
        recorded = (self.end or {}).get("seconds")
        return float(recorded) if recorded is not None else self.last_t - self.start.get("t", 0.0)

    def summary(self) -> dict[str, Any]:
        start, end = self.start, self.end or {}
        return {
            "index": self.index,
            "question": start.get("question", ""),
            "model": start.get("model", ""),
            "sub_model": start.get("sub_model", ""),
            "inputs": [
                {k: i.get(k) for k in ("name", "kind", "shape", "preview")}
                for i in start.get("inputs", [])
            ],
            "contexts": start.get("contexts", []),
            "budget": start.get("budget", {}),
            "schema": start.get("schema"),
            "ended": self.end is not None,
            "answer": end.get("answer", ""),
            "ready": end.get("ready", False),
            "stop_reason": end.get("stop_reason", ""),
            "usage": end.get("usage"),
            "seconds": self.seconds,
            "citations": end.get("citations", []),
            "turns": [t.summary() for t in sorted(self.turns.values(), key=lambda t: t.turn)],
            "child_turns": self.child_turns,
            "compactions": self.compactions,
            "subcall_count": len(self.subcalls),
            "prompt_messages": len(self.prompt),
            # compact rows for the timeline: [id, start, end or null, depth, kind, failed]
            "timeline": [
                [
                    s["id"],
                    s["t0"],
                    s.get("t1"),
                    s["depth"],
                    s["kind"],
                    bool(s.get("error")),
                ]
                for s in self.subcalls.values()
            ],
            "tree": self._tree(),
        }

    def _tree(self) -> list[dict[str, Any]]:
        """The root and each child RLM, with tokens, cost and wall time."""
        usage = (self.end or {}).get("usage") or {}
        root = usage.get("root", {})
        nodes = [
            {
                "label": "root",
                "depth": 0,
                "tokens": root.get("input_tokens", 0) + root.get("output_tokens", 0)
                or sum(t.input_tokens + t.output_tokens for t in self.turns.values()),
                "cost_usd": root.get("cost_usd", 0.0),
                "seconds": self.seconds,
            }
        ]
        for s in self.subcalls.values():
            if s["kind"] == "rlm":
                nodes.append(
                    {
                        "label": f"child #{s['id']}: {s['prompt_preview'][:60]}",
                        "depth": s["depth"],
                        "tokens": s.get("input_tokens", 0) + s.get("output_tokens", 0),
                        "cost_usd": None,
                        "seconds": s.get("latency_s"),
                    }
                )
        return nodes


class TraceIndex:
    """One trace file, read so far. Thread-safe; call :meth:`refresh` to read what was added."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.runs: list[_Run] = []
        self.torn = False  # the last line has no end yet
        self.bad_lines = 0
        self._offset = 0
        self._tail = b""

    def refresh(self) -> None:
        """Read the bytes added since the last call. Raises :class:`NotATrace` if the file's
        first line is not a trace event, and ``OSError`` if it cannot be read."""
        with self._lock:
            size = self.path.stat().st_size
            if size < self._offset:  # the file was replaced: start again
                self._reset()
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
            self._offset += len(data)
            lines = (self._tail + data).split(b"\n")
            self._tail = lines.pop()
            self.torn = bool(self._tail.strip())
            for line in lines:
                if line.strip():
                    self._take(line)
            if not self.runs and len(self._tail) > _FIRST_LINE_MAX:
                raise NotATrace(f"{self.path} is not a ctxfold trace (no event in its first line)")

    def _take(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
            if not self.runs:
                raise NotATrace(f"{self.path} is not a ctxfold trace (its first line is not one)")
            self.bad_lines += 1
            return
        self._apply(event)

    def _apply(self, e: dict[str, Any]) -> None:
        kind = e["type"]
        if kind == "run_start":
            self.runs.append(_Run(len(self.runs), e))
            return
        if not self.runs:
            if kind != "run_resume":
                raise NotATrace(f"{self.path} is not a ctxfold trace (it does not start a run)")
            self.runs.append(_Run(0, {}))
        run = self.runs[-1]
        run.last_t = max(run.last_t, float(e.get("t", 0.0)))
        if kind == "run_end":
            run.end = e
        elif kind == "root_prompt":
            if e.get("depth", 0) == 0:
                run.prompt = e.get("messages", [])
        elif kind.startswith("subcall") or kind == "tool_call":
            _apply_subcall(run, e)
        elif e.get("depth", 0) > 0:
            run.child_turns += kind == "root_response"
        else:
            _apply_turn(run, e)


def _apply_subcall(run: _Run, e: dict[str, Any]) -> None:
    kind = e["type"]
    if kind == "subcall_start":
        run.subcalls[e["call_id"]] = {
            "id": e["call_id"],
            "kind": e.get("kind", ""),
            "model": e.get("model", ""),
            "depth": e.get("depth", 1),
            "t0": e.get("t", 0.0),
            "prompt_chars": e.get("prompt_chars", 0),
            "prompt_preview": e.get("prompt_preview", ""),
        }
        return
    call = run.subcalls.setdefault(
        e["call_id"],
        {"id": e["call_id"], "kind": e.get("kind", "tool"), "depth": e.get("depth", 1)}
        | {"t0": e.get("t", 0.0), "model": e.get("model", ""), "prompt_preview": ""},
    )
    if kind == "subcall_end":
        call.update(
            t1=e.get("t", 0.0),
            input_tokens=e.get("input_tokens", 0),
            output_tokens=e.get("output_tokens", 0),
            latency_s=e.get("latency_s", 0.0),
            response=e.get("response", ""),
            error=e.get("error"),
        )
    else:
        tool = {k: e.get(k) for k in ("tool", "arguments", "result", "error", "latency_s")}
        call.setdefault("tools", []).append(tool)


def _apply_turn(run: _Run, e: dict[str, Any]) -> None:
    kind = e["type"]
    turn = run.turn(int(e.get("turn", 0)))
    if kind == "root_request":
        turn.t = e.get("t", 0.0)
    elif kind == "root_response":
        turn.reply = e.get("text", "")
        turn.input_tokens = e.get("input_tokens", 0)
        turn.output_tokens = e.get("output_tokens", 0)
        turn.latency_s = e.get("latency_s", 0.0)
    elif kind == "cell":
        keys = ("index", "code", "stdout", "stderr", "error", "timed_out", "duration_s")
        turn.cells.append({k: e.get(k) for k in keys})
    elif kind == "compaction":
        run.compactions.append({k: e.get(k) for k in ("turn", "before_chars", "after_chars")})
        turn.notes.append({"kind": "compaction", "text": e.get("summary", "")})
    else:
        text = e.get("content") or e.get("reason") or ""
        if kind == "answer_update":
            text = f"{'ready' if e.get('ready') else 'draft'}: {text}"
        turn.notes.append({"kind": kind.replace("_", " "), "text": text})


def trace_summary(index: TraceIndex) -> dict[str, Any]:
    """What the page shows first of a trace: its runs, each with turn and sub-call summaries."""
    with index._lock:
        return {
            "file": index.path.name,
            "torn": index.torn,
            "bad_lines": index.bad_lines,
            "runs": [run.summary() for run in index.runs],
        }


def trace_overview(index: TraceIndex) -> list[dict[str, Any]]:
    """Each run's few figures, for a folder's table (no turns, no timeline)."""
    with index._lock:
        rows = []
        for run in index.runs:
            end = run.end or {}
            usage = end.get("usage") or {}
            tokens = sum(
                usage.get(part, {}).get(k, 0)
                for part in ("root", "sub")
                for k in ("input_tokens", "output_tokens")
            )
            rows.append(
                {
                    "question": run.start.get("question", ""),
                    "model": run.start.get("model", ""),
                    "answer": end.get("answer", ""),
                    "stop_reason": end.get("stop_reason", ""),
                    "tokens": tokens,
                    "cost_usd": usage.get("cost_usd", 0.0),
                    "seconds": run.seconds,
                }
            )
        return rows


def turn_details(index: TraceIndex, run: int, turn: int) -> dict[str, Any] | None:
    with index._lock:
        if not 0 <= run < len(index.runs) or turn not in index.runs[run].turns:
            return None
        return index.runs[run].turns[turn].details()


def root_prompt(index: TraceIndex, run: int) -> list[dict[str, Any]] | None:
    """The messages the run's root model started from (``None``: no such run)."""
    with index._lock:
        if not 0 <= run < len(index.runs):
            return None
        return list(index.runs[run].prompt)


def subcall_rows(index: TraceIndex, run: int, offset: int, limit: int) -> list[dict[str, Any]]:
    """Sub-calls ``offset .. offset + limit`` of a run, in start order, with short texts."""
    with index._lock:
        if not 0 <= run < len(index.runs):
            return []
        calls = list(index.runs[run].subcalls.values())[offset : offset + limit]
        return [
            {k: v for k, v in c.items() if k not in ("response", "tools")}
            | {"response_preview": (c.get("response") or "")[:_PREVIEW]}
            for c in calls
        ]


def subcall_details(index: TraceIndex, run: int, call_id: int) -> dict[str, Any] | None:
    with index._lock:
        if not 0 <= run < len(index.runs):
            return None
        call = index.runs[run].subcalls.get(call_id)
        return None if call is None else dict(call)
