"""Synthetic traces for tests and benchmarks of trace readers (the viewer)."""

from __future__ import annotations

import os

from ctxfold.trace import (
    Cell,
    RootRequest,
    RootResponse,
    RunEnd,
    RunStart,
    SubcallEnd,
    SubcallStart,
    Trace,
)


def write_big_trace(path: str | os.PathLike[str], *, subcalls: int, turns: int = 3) -> None:
    """A finished run of ``turns`` root turns whose cells make ``subcalls`` sub-calls in all,
    16 at a time, each with a prompt preview and a reply, written to ``path`` as JSONL."""
    trace = Trace(path)
    trace.emit(
        RunStart(
            run_id="synthetic",
            question="Label every line of the log",
            model="root",
            sub_model="sub",
            budget={"iterations": 30},
            contexts=["str, synthetic"],
        )
    )
    t, call = 0.0, 0
    per_turn = -(-subcalls // turns)
    for turn in range(1, turns + 1):
        trace.emit(RootRequest(t=t, turn=turn, messages=2 * turn, chars=1000 * turn))
        t += 1.0
        trace.emit(
            RootResponse(
                t=t,
                turn=turn,
                text=f"```python\nlabels = llm_batch(lines[{turn}])\n```",
                model="root",
                input_tokens=500,
                output_tokens=40,
                latency_s=1.0,
            )
        )
        started = t
        count = min(per_turn, subcalls - call)
        t = max(t, _subcalls(trace, start=call, count=count, at=started))
        call += count
        trace.emit(
            Cell(
                t=t,
                turn=turn,
                index=0,
                code=f"labels = llm_batch(lines[{turn}])",
                stdout=f"{per_turn} labels",
                stderr="",
                error=None,
                timed_out=False,
                restarted=False,
                duration_s=t - started,
            )
        )
    usage = {
        "root": {"calls": turns, "input_tokens": 500 * turns, "output_tokens": 40 * turns},
        "sub": {"calls": subcalls, "input_tokens": 12 * subcalls, "output_tokens": 2 * subcalls},
        "cost_usd": 0.0,
        "per_model": {},
        "per_depth": {},
    }
    trace.emit(RunEnd(t=t, answer="done", ready=True, stop_reason="ready", usage=usage, seconds=t))
    trace.close()


def _subcalls(trace: Trace, *, start: int, count: int, at: float) -> float:
    """``count`` sub-calls numbered from ``start``, 16 at a time from ``at``, each taking
    0.2 s; returns when the last one ended."""
    end = at
    for i in range(count):
        call, t0 = start + i, at + (i // 16) * 0.2
        prompt = f"Label this line: line {call} of the log"
        trace.emit(
            SubcallStart(
                t=t0,
                depth=1,
                call_id=call,
                kind="llm",
                model="sub",
                prompt_chars=len(prompt),
                prompt_preview=prompt,
            )
        )
        trace.emit(
            SubcallEnd(
                t=t0 + 0.2,
                depth=1,
                call_id=call,
                kind="llm",
                model="sub",
                input_tokens=12,
                output_tokens=2,
                latency_s=0.2,
                response=f"label {call % 7}",
            )
        )
        end = max(end, t0 + 0.2)
    return end
