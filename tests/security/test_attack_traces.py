"""Broken and hostile traces: a run is always resumable or refused in one line.

Covers cell output with Unicode line breaks, a last line torn inside a character, corrupted
lines and fields, a kill inside a turn's second code block, and a trace whose model spec points
somewhere else than the user's configuration (it would receive the user's API key).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import ctxfold
from ctxfold import Budget, CtxfoldError, UntrustedSpecError
from ctxfold.models import ScriptedModel, foreign_endpoint
from ctxfold.testing.fake_openai import FakeOpenAIServer
from ctxfold.trace import Cell, SubcallStart, Trace

from .attack_helpers import code


def _run_trace(tmp_path: Path, cells: list[str]) -> Path:
    path = tmp_path / "run.jsonl"
    source = tmp_path / "input.txt"  # a file input stays after the run, for resume tests
    source.write_text("some input", encoding="utf-8")
    done = code("answer['content'] = 'x'\nanswer['ready'] = True")
    root = ScriptedModel([code(c) for c in cells] + [done])
    with ctxfold.RLM(root, budget=Budget(iterations=len(cells) + 1)) as rlm:
        rlm.run("q", source, trace=path)
    return path


def _cli(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctxfold", *args],
        capture_output=True,
        text=True,
        stdin=stdin,
        timeout=120,
        check=False,
    )


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctxfold: error: "), done.stderr
    return lines[0]


# -- 11. Unicode line breaks in cell output --------------------------------------------------


def test_cell_output_with_unicode_line_breaks_loads_back(tmp_path: Path) -> None:
    path = _run_trace(tmp_path, ["print('a\\u2028b\\u2029c\\x85d\\x1ce')"])
    loaded = Trace.load(path)
    [cell, *_] = loaded.of_type(Cell)
    assert cell.stdout == "a\u2028b\u2029c\x85d\x1ce\n"
    assert len(loaded) == len(path.read_bytes().splitlines())


# -- 12. a last line torn inside a multi-byte character --------------------------------------


def test_a_line_torn_inside_a_character_is_skipped(tmp_path: Path) -> None:
    path = _run_trace(tmp_path, ["print('caf\\u00e9')"])
    whole = len(Trace.load(path))
    torn = '{"type": "feedback", "t": 1.0, "turn": 9, "content": "caf\u00e9'.encode()[:-1]
    with path.open("ab") as out:
        out.write(torn)
    assert len(Trace.load(path)) == whole
    reopened = Trace.reopen(path)
    reopened.close()
    assert path.read_bytes().endswith(b"\n")


# -- 13. corrupted lines and fields ----------------------------------------------------------

_BAD_LINES = {
    "a list": "[1, 2, 3]",
    "a number": "42",
    "a string": '"run_start"',
    "no type": '{"t": 0}',
    "an unknown type": '{"type": "rm -rf"}',
    "a missing field": '{"type": "feedback", "t": 0, "depth": 0, "content": "x"}',
    "a mistyped field": '{"type": "feedback", "t": 0, "depth": 0, "turn": "1", "content": "x"}',
    "a bool for an int": '{"type": "feedback", "t": 0, "depth": true, "turn": 1, "content": "x"}',
    "a bad list item": (
        '{"type": "cell", "turn": 1, "index": 0, "code": "", "stdout": "", "stderr": "",'
        ' "error": null, "timed_out": false, "restarted": false, "duration_s": 0,'
        ' "restored": [1]}'
    ),
    "not UTF-8": b'{"type": "feedback", "content": "\xff"}'.decode("latin-1"),
}


@pytest.mark.parametrize("name", sorted(_BAD_LINES))
def test_a_corrupted_line_is_one_clear_error(tmp_path: Path, name: str) -> None:
    path = _run_trace(tmp_path, ["print(1)"])
    lines = path.read_bytes().splitlines()
    bad = _BAD_LINES[name].encode("latin-1" if name == "not UTF-8" else "utf-8")
    lines.insert(1, bad)
    lines[-1:] = []  # drop run_end: a resumable run but for the bad line
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(CtxfoldError, match=rf"{path.name}'?:2: ") as caught:
        Trace.load(path)
    assert "\n" not in str(caught.value)
    _one_line_error(_cli("resume", str(path)))


def _edit_start(path: Path, **changes: Any) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    start = json.loads(lines[0])
    start.update(changes)
    lines[0] = json.dumps(start)
    path.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # and drop run_end


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"budget": {"iterations": 3, "rockets": 1}}, "unknown budget field"),
        ({"budget": {"iterations": "many"}}, "must be a number"),
        ({"budget": [1]}, "a bad 'budget' field"),
        ({"inputs": [{"name": "context_0", "kind": "shell", "path": "/"}]}, "input 0 is malformed"),
        ({"inputs": [{"name": 1, "kind": "text_file", "path": "/etc/hostname"}]}, "malformed"),
        ({"inputs": ["x"]}, "a bad 'inputs' field"),
    ],
)
def test_a_corrupted_run_start_is_refused_in_one_line(
    tmp_path: Path, changes: dict[str, Any], why: str
) -> None:
    path = _run_trace(tmp_path, ["print(1)"])
    _edit_start(path, model_spec="openai:m", sub_model_spec="openai:m", **changes)
    with pytest.raises(CtxfoldError, match=why):
        ctxfold.RLM.resume(path, model=ScriptedModel(["x"]))
    assert why in _one_line_error(_cli("resume", str(path), "--model", "openai:m"))


# -- 14. kill -9 inside a turn's second code block -------------------------------------------

_RUNNER = """
import sys, ctxfold
rlm = ctxfold.RLM(model=sys.argv[1])
rlm.run("What is it?", context="some input text", trace=sys.argv[2])
"""

_TWO_BLOCKS = (
    "Two steps.\n```python\nfirst = llm_query('sub one')\nprint(first)\n```\n"
    "```python\nsecond = llm_query('sub two')\nprint(first, second)\n```"
)


class _Script:
    """Turn 1: two blocks; the second block's sub-call hangs until released. Turn 2: answer."""

    def __init__(self) -> None:
        self.hanging = threading.Event()
        self.release = threading.Event()

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        last = messages[-1]["content"]
        if last == "sub one":
            return "one"
        if last == "sub two":
            self.hanging.set()
            self.release.wait(30)
            return "two"
        if sum(m["role"] == "assistant" for m in messages) == 0:
            return _TWO_BLOCKS
        return code("answer['content'] = first + second\nanswer['ready'] = True")


def test_a_kill_in_a_second_block_resumes_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "run.jsonl"
    script = _Script()
    with FakeOpenAIServer(script) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        spec = f"openai:m@{server.base_url}"
        proc = subprocess.Popen([sys.executable, "-c", _RUNNER, spec, str(trace)])
        assert script.hanging.wait(60), "the run never reached its second block"
        time.sleep(0.3)  # let the first block's cell event reach the file
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        before = Trace.load(trace)
        assert [(c.turn, c.index) for c in before.of_type(Cell)] == [(1, 0)]
        script.release.set()
        result = ctxfold.RLM.resume(trace)
    assert result.ready and result.answer == "onetwo"
    cells = [(c.turn, c.index) for c in result.trace.of_type(Cell) if c.depth == 0]
    assert cells == [(1, 0), (1, 1), (2, 0)]
    ids = [e.call_id for e in result.trace.of_type(SubcallStart)]
    assert len(ids) == len(set(ids)), ids


# -- 15. a trace that points the user's key somewhere else ------------------------------------


def test_a_foreign_endpoint_in_a_trace_is_not_used_blindly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-user-secret")
    attacker = socket.socket()
    attacker.bind(("127.0.0.1", 0))
    attacker.listen(4)
    attacker.setblocking(False)
    evil = f"openai:gpt@http://127.0.0.1:{attacker.getsockname()[1]}/v1"
    path = _run_trace(tmp_path, ["print(1)"])
    _edit_start(path, model_spec=evil, sub_model_spec=evil)
    with pytest.raises(UntrustedSpecError, match="pass model="):
        ctxfold.RLM.resume(path)
    line = _one_line_error(_cli("resume", str(path)))
    assert "--model" in line and "127.0.0.1" in line
    with pytest.raises(BlockingIOError):
        attacker.accept()  # nobody called it
    attacker.close()


def test_endpoints_are_compared_with_the_users_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert foreign_endpoint("openai:gpt-5-mini") is None
    assert foreign_endpoint("local") is None
    assert foreign_endpoint("openai:m@https://api.openai.com/v1") is None
    assert foreign_endpoint("openai:m@http://evil.example:80/v1") == "http://evil.example:80"
    assert foreign_endpoint("anthropic:c@https://evil.example") == "https://evil.example:443"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    assert foreign_endpoint("openai:m@http://127.0.0.1:8000/v1") is None
    assert foreign_endpoint("openai:m@http://127.0.0.1:8001/v1") == "http://127.0.0.1:8001"
