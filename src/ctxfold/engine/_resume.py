"""Resuming a run whose host died, from its JSONL trace.

The trace holds every root reply, every cell's code, the feedback the root model got, and every
sub-call's answer. Resuming rebuilds the root conversation from those, replays the executed cells
in a fresh sandbox while answering their sub-calls from the trace (no new model calls for what
was already answered), restores the budget meters, and goes on from the last completed turn.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from ctxfold.broker import request_key
from ctxfold.engine._run import RunShared
from ctxfold.errors import CtxfoldError
from ctxfold.models import TokenUsage
from ctxfold.sandbox import AnswerState, SubcallHandler, SubcallRequest
from ctxfold.trace import (
    AnswerUpdate,
    Cell,
    Event,
    Feedback,
    RootResponse,
    RunEnd,
    RunStart,
    SubcallEnd,
    SubcallStart,
    ToolCall,
    Trace,
)


@dataclass(slots=True)
class TurnRecord:
    """One root turn as recorded: the reply, the code cells it ran, and the feedback sent back."""

    turn: int
    reply: str
    cells: list[str] = field(default_factory=list)
    feedback: str | None = None
    printed: bool = False


@dataclass(slots=True)
class AskedRecord:
    """An earlier, finished question of a session, as its trace recorded it: enough to run its
    cells again (with their recorded sub-call answers) and to tell later questions about it."""

    start: RunStart
    cells: list[str]  # the top run's cells, in order
    answers: dict[str, deque[str]]  # request key -> recorded answers, oldest first
    updates: list[tuple[str, bool]]  # every (content, ready) the answer went through
    end: RunEnd | None


@dataclass(slots=True)
class ResumeState:
    """What a resumed run starts from (for a session: its unfinished question)."""

    start: RunStart
    turns: list[TurnRecord]  # completed turns, in order
    partial: TurnRecord | None  # a turn whose reply came but whose feedback was not written
    answer: AnswerState
    best: str
    answers: dict[str, deque[str]]  # request key -> recorded answers, oldest first
    trace: Trace
    events: list[Event] = field(default_factory=list)  # this question's events
    earlier: list[AskedRecord] = field(default_factory=list)  # a session's finished questions

    def restore_meters(self, shared: RunShared) -> None:
        """Count what the recorded part of the run spent, in usage and against the budget, and
        number new sub-calls after the recorded ones (of the whole trace)."""
        ids = [e.call_id for e in self.trace if isinstance(e, SubcallStart | SubcallEnd | ToolCall)]
        shared.continue_ids(max(ids, default=-1) + 1)
        for event in self.events:
            if isinstance(event, RootResponse):
                usage = TokenUsage(
                    event.input_tokens, event.output_tokens, cache_hit=event.cache_hit
                )
                shared.account(root=True, depth=event.depth, model=event.model, usage=usage)
                if event.depth == 0:
                    shared.meter.add_iteration()
                else:  # a child run's turns count as sub-calls of the run
                    shared.meter.reserve_sub_call()
            elif isinstance(event, SubcallEnd) and event.kind == "llm":
                usage = TokenUsage(
                    event.input_tokens, event.output_tokens, cache_hit=event.cache_hit
                )
                shared.account(root=False, depth=event.depth, model=event.model, usage=usage)
                shared.meter.reserve_sub_call()


def load_resume_state(trace: Trace) -> ResumeState:
    """Read what a resumed run needs from a loaded trace. Raises :class:`CtxfoldError`.

    A session's trace holds one run per question: the last one is resumed, the finished ones
    before it come back as :attr:`ResumeState.earlier`."""
    runs = [run for run in trace.runs() if isinstance(run[0], RunStart)]
    if not runs:
        raise CtxfoldError("the trace has no run_start event: not a ctxfold run trace")
    last = runs[-1]
    if any(isinstance(e, RunEnd) and e.stop_reason != "interrupted" for e in last):
        raise CtxfoldError("that run already ended; there is nothing to resume")
    earlier = [_asked(run) for run in runs[:-1]]
    start = last[0]
    assert isinstance(start, RunStart)
    state = _unfinished(start, last, trace)
    state.earlier = earlier
    return state


def _asked(events: list[Event]) -> AskedRecord:
    start = events[0]
    assert isinstance(start, RunStart)
    cells = [e.code for e in events if isinstance(e, Cell) and e.depth == 0]
    updates = [(e.content, e.ready) for e in events if isinstance(e, AnswerUpdate) and e.depth == 0]
    ends = [e for e in events if isinstance(e, RunEnd)]
    return AskedRecord(start, cells, _subcall_answers(events), updates, ends[-1] if ends else None)


def _subcall_answers(events: list[Event]) -> dict[str, deque[str]]:
    keys: dict[int, str] = {}
    answers: dict[str, deque[str]] = defaultdict(deque)
    for event in events:
        if event.depth == 1 and isinstance(event, SubcallStart):
            keys[event.call_id] = event.key
        elif event.depth == 1 and isinstance(event, SubcallEnd) and event.error is None:
            key = keys.get(event.call_id)
            if key:
                answers[key].append(event.response)
    return answers


def _unfinished(start: RunStart, events: list[Event], trace: Trace) -> ResumeState:
    turns: dict[int, TurnRecord] = {}
    answer, best = AnswerState(), ""
    for event in events:
        if event.depth == 0 and isinstance(event, RootResponse):
            turns[event.turn] = TurnRecord(turn=event.turn, reply=event.text)
        elif event.depth == 0 and isinstance(event, Cell) and event.turn in turns:
            turns[event.turn].cells.append(event.code)
            turns[event.turn].printed |= bool(event.stdout.strip())
        elif event.depth == 0 and isinstance(event, Feedback) and event.turn in turns:
            turns[event.turn].feedback = event.content
        elif event.depth == 0 and isinstance(event, AnswerUpdate):
            answer = AnswerState(event.content, event.ready)
            best = event.content or best
    ordered = [turns[n] for n in sorted(turns)]
    done = [t for t in ordered if t.feedback is not None]
    partial = ordered[-1] if ordered and ordered[-1].feedback is None else None
    answers = _subcall_answers(events)
    return ResumeState(start, done, partial, answer, best, answers, trace, events)


class ReplayHandler:
    """Answers sub-calls from the trace while it has them; asks ``live`` for the rest."""

    def __init__(self, answers: dict[str, deque[str]], live: SubcallHandler) -> None:
        self._answers = answers
        self._live = live
        self.replayed = 0

    def __call__(self, request: SubcallRequest) -> list[str] | dict[str, Any]:
        if request.kind == "budget":
            return self._live(request)
        results: list[str | None] = []
        for item in request.items:
            queue = self._answers.get(request_key(request.kind, item))
            results.append(queue.popleft() if queue else None)
        self.replayed += sum(r is not None for r in results)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            fresh = self._live(
                SubcallRequest(request.kind, tuple(request.items[i] for i in missing))
            )
            if not isinstance(fresh, list):  # pragma: no cover - handlers answer lists here
                fresh = [f"[error: bad reply {fresh!r:.80}]"] * len(missing)
            for i, text in zip(missing, fresh, strict=False):
                results[i] = text
        return [r if r is not None else "[error: no answer]" for r in results]
