"""Whole RLM runs whose root model (a ScriptedModel) writes hostile cells.

The run must end normally (with the answer the model finally gives, or a budget reason), the
host must survive, and nothing secret may land in the trace.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import ctxfold
from ctxfold.models import Message, ScriptedModel
from ctxfold.sandbox import ProcessSandbox, Sandbox
from ctxfold.trace import Cell, RunStart, WorkerRestart

from .attack_helpers import SECRET_KEY, accepted, code


def _rlm(replies: list[str] | Callable[[list[Message]], str], **options: object) -> ctxfold.RLM:
    root = ScriptedModel(replies, name="root")
    sub = ScriptedModel(lambda messages: "sub-answer", name="sub")
    return ctxfold.RLM(model=root, sub_model=sub, **options)  # type: ignore[arg-type]


def test_a_hostile_run_goes_on_to_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tcp_server: socket.socket
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    port = tcp_server.getsockname()[1]
    attacks = [
        "import os\nprint(os.environ.get('OPENAI_API_KEY'), open('/proc/self/environ').read())",
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)",
        "import os, struct\nos.write(int(__import__('sys').argv[2]), struct.pack('>I', 2**31))",
        "import os\nos.kill(os.getppid(), 9)",
        "import os\nwhile True:\n    os.fork()",
        "x = bytearray(50 * 2**30)",
        "while True:\n    pass",
        "import os\nos._exit(1)",
        "llm_query = None\ndel answer",
    ]
    replies = [code(a) for a in attacks]
    replies += [code("print(len(context))"), code("FINAL(f'{len(context)} chars')")]
    trace_path = tmp_path / "run.jsonl"
    budget = ctxfold.Budget(iterations=len(replies) + 2, cell_seconds=2)
    result = _rlm(replies, budget=budget).run("How long is it?", context="abcdef", trace=trace_path)
    assert result.ready and result.answer == "6 chars" and result.stop_reason == "ready"
    assert not accepted(tcp_server)
    raw = trace_path.read_text()
    assert SECRET_KEY not in raw
    events = result.trace.events
    assert any(isinstance(e, WorkerRestart) for e in events)
    [start] = [e for e in events if isinstance(e, RunStart)]
    assert start.isolation == ProcessSandbox().isolation != ""
    assert json.loads(raw.splitlines()[0])["isolation"] == start.isolation
    cells = [e for e in events if isinstance(e, Cell)]
    assert len(cells) == len(replies)


def test_recursion_through_rlm_query_is_bounded() -> None:
    made: list[Sandbox] = []
    lock = threading.Lock()

    def factory() -> Sandbox:
        sandbox = ProcessSandbox()
        with lock:
            made.append(sandbox)
        return sandbox

    def always_recurse(messages: list[Message]) -> str:
        return code("print(rlm_query('go one level deeper', context='again'))")

    budget = ctxfold.Budget(iterations=3, depth=2, cell_seconds=30)
    result = _rlm(always_recurse, budget=budget, sandbox=factory).run("dig", context="start")
    assert not result.ready
    assert result.stop_reason == "iterations"
    # the top run and one child per top turn (each child's own calls are plain sub-calls)
    assert 1 < len(made) <= 1 + budget.iterations
    assert not [s for s in made if s.worker_pid is not None]  # every sandbox was closed


def test_run_start_names_the_isolation_level() -> None:
    result = _rlm([code("print(1)"), code("FINAL('one')")]).run("q", context="x")
    [start] = [e for e in result.trace.events if isinstance(e, RunStart)]
    assert start.isolation in ("bwrap+netns+rlimits", "unshare-net+rlimits", "rlimits")
    assert result.answer == "one"
