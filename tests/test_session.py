"""Sessions: several questions in one sandbox, driven by scripted models and a real worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ctxfold
from ctxfold.models import ScriptedModel
from ctxfold.testing.fake_openai import FakeOpenAIServer
from ctxfold.trace import Cell, RunEnd, RunStart, Trace


def code(src: str) -> str:
    return f"```python\n{src}\n```"


def _question(messages: list[dict[str, Any]]) -> str:
    """The question a root call is about: the task message's last 'Question:' line."""
    task = next(m["content"] for m in messages if m["role"] == "user")
    return [line for line in task.splitlines() if line.startswith("Question: ")][-1]


SCRIPT = {
    "Question: count the a's": code(
        "n_a = context.count('a')\nprint(n_a)\nanswer['content'] = str(n_a)\nanswer['ready'] = True"
    ),
    "Question: double it": code(
        "print(n_a, len(answers))\nanswer['content'] = str(2 * n_a)\nanswer['ready'] = True"
    ),
    "Question: what did I ask first?": code(
        "print(answers[0])\nanswer['content'] = answers[0]['question']\nanswer['ready'] = True"
    ),
}


def scripted() -> ScriptedModel:
    return ScriptedModel(lambda messages: SCRIPT[_question(messages)], name="root")


def test_three_questions_share_one_repl(tmp_path: Path, no_orphans: None) -> None:
    model = scripted()
    trace = tmp_path / "session.jsonl"
    with ctxfold.RLM(model) as rlm, rlm.session("banana", trace=trace) as session:
        first = session.ask("count the a's")
        second = session.ask("double it")  # uses n_a, made by the first question's code
        third = session.ask("what did I ask first?")
    assert (first.answer, second.answer, third.answer) == ("3", "6", "count the a's")
    assert all(r.ready for r in (first, second, third))
    # Every version of every answer, with its question, oldest first.
    assert [a["question"] for a in session.answers] == [
        "count the a's",
        "double it",
        "what did I ask first?",
    ]
    # A later question is told the earlier ones and their answers, not their conversations.
    task = next(m["content"] for m in model.calls[1] if m["role"] == "user")
    assert "1. Question: count the a's" in task and "Answer (final): 3" in task
    assert "n_a: int" in task  # the variables the REPL now holds
    assert len(model.calls[1]) == len(model.calls[0])  # no earlier turns in the conversation
    # One trace: a run per question, tagged with the session and the question's number.
    events = Trace.load(trace)
    starts = events.of_type(RunStart)
    assert [(s.session, s.index) for s in starts] == [
        (session.id, 0),
        (session.id, 1),
        (session.id, 2),
    ]
    assert len(events.of_type(RunEnd)) == 3
    # One sandbox for all: the cells of question 2 saw question 1's variable.
    cells = events.of_type(Cell)
    assert cells[1].stdout.strip() == "3 1"


def test_add_context_and_aask(no_orphans: None) -> None:
    replies = {
        "Question: join": code(
            "print(context_1)\nanswer['content'] = context + context_1\nanswer['ready'] = True"
        )
    }
    model = ScriptedModel(lambda messages: replies[_question(messages)])
    with ctxfold.RLM(model) as rlm, rlm.session("abc") as session:
        assert session.add_context("def") == "context_1"
        result = asyncio.run(session.aask("join"))
    assert result.answer == "abcdef"
    assert [c.name for c in session.inputs] == ["context_0", "context_1"]


def test_budgets_per_question_and_for_the_session(no_orphans: None) -> None:
    looping = ScriptedModel(lambda messages: code("print('again', len(messages_seen := []))"))
    budget = ctxfold.Budget(iterations=2)
    with ctxfold.RLM(looping, budget=budget) as rlm:
        whole = ctxfold.Budget(iterations=3)
        with rlm.session("x", session_budget=whole) as session:
            first = session.ask("q1")
            assert first.stop_reason == "iterations" and first.iterations == 2
            second = session.ask("q2")  # capped: one turn of the session's three is left
            assert second.iterations == 1
            with pytest.raises(ctxfold.CtxfoldError, match="session's budget is spent"):
                session.ask("q3")


def test_closed_sessions_and_bad_input_are_clear_errors(no_orphans: None) -> None:
    with ctxfold.RLM(scripted()) as rlm:
        session = rlm.session("banana")
        with pytest.raises(ctxfold.CtxfoldError, match="non-empty string"):
            session.ask("  ")
        with pytest.raises(ctxfold.CtxfoldError, match="schema must be a type"):
            session.ask("count the a's", schema=3)
        assert session.ask("count the a's").answer == "3"  # nothing was lost meanwhile
        session.close()
        with pytest.raises(ctxfold.CtxfoldError, match="session is closed"):
            session.ask("double it")
        with pytest.raises(ctxfold.CtxfoldError, match="session is closed"):
            session.add_context("more")


SESSION_RUNNER = """
import sys, ctxfold
rlm = ctxfold.RLM(model=sys.argv[1])
with rlm.session("banana", trace=sys.argv[2]) as session:
    print(session.ask("count the a's").answer, flush=True)
    session.ask("double it")
"""


class _Hanging:
    """Question 1 answers at once; question 2 asks a sub-call, then hangs until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.reached = threading.Event()

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        if messages[-1]["content"].startswith("sub "):
            return "sub answer"
        question = _question(messages)
        turn = sum(m["role"] == "assistant" for m in messages)
        if question == "Question: count the a's":
            return code(
                "n_a = context.count('a')\nprint(n_a, llm_query('sub one'))\n"
                "answer['content'] = str(n_a)\nanswer['ready'] = True"
            )
        if question == "Question: what did I ask first?":
            return code(
                "print(n_a, half)\nanswer['content'] = f\"{answers[0]['question']} {half}\"\n"
                "answer['ready'] = True"
            )
        if turn == 0:
            return code("half = llm_query('sub two')\nprint(n_a, half)")
        self.reached.set()
        self.release.wait(30)
        return code("answer['content'] = f'{2 * n_a} {half}'\nanswer['ready'] = True")


@contextlib.contextmanager
def _killed_session(
    trace: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeOpenAIServer, int]]:
    """A session killed (``kill -9``) during question 2; yields the live server and how many
    requests it had seen by then."""
    script = _Hanging()
    with FakeOpenAIServer(script) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        spec = f"openai:m@{server.base_url}"
        proc = subprocess.Popen(
            [sys.executable, "-c", SESSION_RUNNER, spec, str(trace)], stdout=subprocess.PIPE
        )
        assert script.reached.wait(60), "the session never reached question 2's second turn"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        script.release.set()
        yield server, len(server.requests)


def test_a_killed_session_resumes_from_its_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "session.jsonl"
    with _killed_session(trace, monkeypatch) as (server, asked_before):
        result = ctxfold.RLM.resume(trace)

        assert result.ready and result.answer == "6 sub answer"  # n_a came from question 1
        new = server.requests[asked_before:]
        # Only the hanging root turn is asked again: question 1 and both sub-calls were replayed.
        assert len(new) == 1 and not new[0]["messages"][-1]["content"].startswith("sub ")
    events = Trace.load(trace)
    assert [e.index for e in events.of_type(RunStart)] == [0, 1]
    assert events.of_type(RunEnd)[-1].answer == "6 sub answer"
    assert not (tmp_path / "session.jsonl.inputs").exists()


def test_a_killed_session_reopens_for_more_questions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "session.jsonl"
    with _killed_session(trace, monkeypatch):
        session = ctxfold.RLM.resume_session(trace)
        with session:
            assert session.resumed is not None
            assert session.resumed.answer == "6 sub answer"
            # the REPL holds what the finished questions left: n_a, half and answers
            later = session.ask("what did I ask first?")
        assert later.ready and later.answer == "count the a's sub answer"
        with pytest.raises(ctxfold.CtxfoldError, match="session is closed"):
            session.ask("double it")
    events = Trace.load(trace)
    assert [e.index for e in events.of_type(RunStart)] == [0, 1, 2]
    assert events.of_type(RunEnd)[-1].answer == "count the a's sub answer"


def test_resume_session_refuses_the_trace_of_a_single_run(tmp_path: Path) -> None:
    trace = tmp_path / "run.jsonl"
    model = ScriptedModel([code("answer['content'] = 'x'\nanswer['ready'] = True")])
    with ctxfold.RLM(model=model) as rlm:
        rlm.run("q", context="data", trace=trace)
    lines = trace.read_text().splitlines(keepends=True)
    trace.write_text("".join(lines[:-1]))  # its run_end dropped: as if the host died
    with pytest.raises(ctxfold.CtxfoldError, match="single run, not a session: use resume"):
        ctxfold.RLM.resume_session(trace, model=model)
