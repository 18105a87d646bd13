"""Resuming a run after its host was killed with SIGKILL, from the JSONL trace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import ctxfold
from ctxfold.models import ScriptedModel
from ctxfold.testing.fake_openai import FakeOpenAIServer
from ctxfold.trace import Cell, Compaction

TURNS = [
    '```python\nparts = llm_batch(["sub A", "sub B"])\nsecret = 41\nprint(parts)\n```',
    "```python\nprint(secret + 1)\n```",
    '```python\nanswer["content"] = str(secret + 1)\nanswer["ready"] = True\n```',
]

RUNNER = """
import sys, ctxfold
rlm = ctxfold.RLM(model=sys.argv[1])
rlm.run("What is the secret plus one?", context="some input text", trace=sys.argv[2])
"""


class _Script:
    """Root replies by turn (the number of assistant messages so far); turn 3 hangs until told."""

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.release = threading.Event()
        self.hang.set()

    def __call__(self, messages: list[dict]) -> str:
        if messages[-1]["content"].startswith("sub "):
            return "got " + messages[-1]["content"][-1]
        turn = sum(m["role"] == "assistant" for m in messages)
        if turn == 2 and self.hang.is_set():
            self.release.wait(30)
        return TURNS[turn]


def _root_requests(server: FakeOpenAIServer, turn: int) -> int:
    return sum(
        1
        for body in server.requests
        if sum(m["role"] == "assistant" for m in body["messages"]) == turn
        and not body["messages"][-1]["content"].startswith("sub ")
    )


def test_resume_after_kill_9_replays_without_new_model_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "run.jsonl"
    script = _Script()
    with FakeOpenAIServer(script) as server:
        spec = f"openai:m@{server.base_url}"
        # The user's own configuration points there: resume trusts the recorded spec.
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, spec, str(trace)])
        deadline = time.monotonic() + 60
        while _root_requests(server, 2) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _root_requests(server, 2) == 1, "the run never reached its third turn"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        script.hang.clear()
        script.release.set()

        events = [json.loads(line)["type"] for line in trace.read_text().splitlines()]
        assert events.count("root_response") == 2 and "run_end" not in events
        assert (tmp_path / "run.jsonl.inputs").is_dir()  # the in-memory input was kept

        result = ctxfold.RLM.resume(trace)

        assert result.ready and result.answer == "42"
        # Turns 1 and 2 and both sub-calls were answered from the trace, not asked again.
        assert _root_requests(server, 0) == 1 and _root_requests(server, 1) == 1
        subs = [b for b in server.requests if b["messages"][-1]["content"].startswith("sub ")]
        assert len(subs) == 2
        # The resumed run tells the root model what the first run told it, word for word.
        roots = [b for b in server.requests if not b["messages"][-1]["content"].startswith("sub ")]
        first, resumed = roots[0]["messages"], roots[-1]["messages"]
        prefix = len(first)
        assert resumed[:prefix] == first
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [e["type"] for e in lines].count("run_resume") == 1 and lines[-1]["type"] == "run_end"
    assert result.usage.root_calls == 3 and result.usage.sub_calls == 2
    cells = [c for c in result.trace.of_type(Cell) if c.depth == 0]
    assert cells[1].stdout.strip() == "42"
    assert not (tmp_path / "run.jsonl.inputs").exists()


def test_resume_refuses_a_finished_run(tmp_path: Path) -> None:
    trace = tmp_path / "done.jsonl"
    script = _Script()
    script.hang.clear()
    with FakeOpenAIServer(script) as server:
        ctxfold.RLM(model=f"openai:m@{server.base_url}").run("q", context="x", trace=trace)
    with pytest.raises(ctxfold.CtxfoldError, match="already ended"):
        ctxfold.RLM.resume(trace)


def test_resume_cli_errors_are_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ctxfold", "resume", str(tmp_path / "missing.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("ctxfold: error:")


def _chunk_printer(first: int, interrupt_at: int | None = None) -> ScriptedModel:
    """Turns from ``first`` on: 12 that each print a marked 1,500-character chunk, then an
    answer naming the markers that `history` holds; Ctrl-C (KeyboardInterrupt) at
    ``interrupt_at``."""
    turn = first

    def reply(messages: list[dict[str, Any]]) -> str:
        nonlocal turn
        if "will be replaced by your notes" in messages[-1]["content"]:
            return "Notes: chunks were printed."
        n, turn = turn, turn + 1
        if n == interrupt_at:
            raise KeyboardInterrupt
        if n < 12:
            return f"```python\nprint('marker{n}-' + '{n % 10}' * 1500)\n```"
        return (
            "```python\ntext = ' '.join(m['content'] for m in history)\n"
            "answer['content'] = ','.join(str(i) for i in range(12) if f'marker{i}-' in text)\n"
            "answer['ready'] = True\n```"
        )

    return ScriptedModel(reply, context_window=8_000)


def test_history_after_resume_holds_the_replayed_turns(tmp_path: Path) -> None:
    trace = tmp_path / "run.jsonl"
    budget = ctxfold.Budget(iterations=40)
    with pytest.raises(KeyboardInterrupt), ctxfold.RLM(_chunk_printer(0, 4), budget=budget) as rlm:
        rlm.run("q", "some input", trace=trace)

    result = ctxfold.RLM.resume(trace, model=_chunk_printer(4), compact_at=0.5, budget=budget)

    assert result.ready and result.trace.of_type(Compaction), "the conversation was not compacted"
    # Turns 0-3 ran before Ctrl-C and were replayed: `history` has them as well as the new ones.
    assert result.answer == ",".join(str(i) for i in range(12))
