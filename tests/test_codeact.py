"""CodeAct + BM25: the root model's own code calls search/read/grep in the REPL; no sub-LLMs.

The mode is an engine extension (``ctxfold.bench.codeact.CodeActTools``) used by the bench's
``codeact_bm25`` method. Tool calls travel sandbox -> host over the worker's channel; everything
the sandbox sends is hostile, so these tests also attack that path.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ctxfold import RLM, Budget
from ctxfold.bench import BenchSpec, run_bench
from ctxfold.bench.codeact import (
    CodeActTools,
    check_arguments,
    check_root_tools,
    code_tools_text,
    codeact_system_prompt,
)
from ctxfold.bench.tool_methods import _write_corpus
from ctxfold.errors import CtxfoldError
from ctxfold.models import Message, ScriptedModel
from ctxfold.result import Result
from ctxfold.tools import Tool, corpus_tools
from ctxfold.trace import ToolCall

CORPUS = {
    "doc-volcano": "Mount Ferra is a volcano. Its last eruption, in 1911, buried the lava fields.",
    "doc-river": "The river Alde flows through Kellmark, a market town known for its wool fair.",
    "doc-painter": "Lena Ostrova was a painter of harbour scenes, born in Kellmark in 1902.",
    "doc-bridge": "The Harlow Bridge is a stone bridge over the river Tam, built in 1420.",
    "doc-bakery": "Varga Bakery was founded in 1932 and sells rye bread and honey cake.",
    "doc-aaa": "a" * 60 + "b",
}
FINISH = '```python\nanswer["content"] = "done"\nanswer["ready"] = True\n```'


def _code(source: str) -> str:
    return f"```python\n{source}\n```"


def _run(
    replies: list[str],
    tools: list[Tool],
    *,
    context: Any = None,
    depth: int = 0,
    sub: ScriptedModel | None = None,
    profile: str = "concise",
) -> tuple[Result, ScriptedModel]:
    root = ScriptedModel(replies, name="scripted-root")
    rlm = RLM(
        model=root,
        sub_model=sub,
        budget=Budget(iterations=len(replies), depth=depth),
        prompt_profile=profile,
        extension=CodeActTools(tools),
    )
    return rlm.run("Which river flows through Kellmark?", CORPUS if context is None else context), (
        root
    )


def _feedback(root: ScriptedModel, turn: int) -> str:
    """What the root model was told after its turn ``turn`` (from 1)."""
    return root.calls[turn][-1]["content"]


def _raised(told: str) -> bool:
    """Whether the feedback reports an exception in the cell."""
    return re.search(r"^Error:$", told, re.MULTILINE) is not None


@pytest.fixture
def corpus(tmp_path: Path) -> list[Tool]:
    return corpus_tools(_write_corpus(CORPUS, tmp_path), cache_dir=tmp_path / "cache")


def test_code_calls_search_read_and_grep_and_gets_real_results(corpus: list[Tool]) -> None:
    result, root = _run(
        [
            _code(
                "hits = search('river Kellmark', k=2)\nprint(hits)\n"
                "print(read('doc-river', start=4, length=11))\nprint(grep('wool'))\n"
                "print(type(hits).__name__)"
            ),
            FINISH,
        ],
        corpus,
    )
    assert result.ready and result.answer == "done", result.stop_reason
    told = _feedback(root, 1)
    ranked = re.findall(r"^\d+\. \[([\w-]+)\] \(score ([\d.]+)\)", told, re.MULTILINE)
    assert ranked[0][0] == "doc-river"  # BM25 ranks first the document with both words
    assert len(ranked) == 2 and float(ranked[0][1]) >= float(ranked[1][1]) > 0
    assert "river Alde" in told  # read(start=4, length=11)
    assert "doc-river:1: The river Alde flows through Kellmark" in told  # grep
    assert "\nstr\n" in told
    calls = result.trace.of_type(ToolCall)
    assert [c.tool for c in calls] == ["search", "read", "grep"]
    assert all(c.depth == 0 and c.error is None for c in calls)
    assert calls[0].arguments == {"query": "river Kellmark", "k": 2}
    assert result.usage.sub_calls == 0


def test_the_prompt_documents_the_functions_and_no_sub_llms(corpus: list[Tool]) -> None:
    _, root = _run([_code("print(search('volcano'))"), FINISH], corpus)
    system = root.calls[0][0]["content"]
    assert "`search(query, k=5) -> str`" in system and "`read(doc_id" in system
    assert "There is no `llm_query`" in system
    assert "llm_batch(prompts" not in system
    _, small = _run([_code("print(search('volcano'))"), FINISH], corpus, profile="small")
    first = small.calls[0]
    assert "search(query, k=5)" in first[0]["content"] and "no llm_query" in first[0]["content"]
    assert any("print(search(" in m["content"] for m in first[1:])  # the CodeAct demonstration
    text = code_tools_text(corpus)
    assert text.count("\n") == 3 and text.startswith("- `search(query, k=5) -> str`: Search")
    for profile in ("concise", "small"):
        prompt = codeact_system_prompt(
            profile, context_summary="dict", output_limit=8000, code_tools=text
        )
        assert "$" not in prompt


def test_a_failing_tool_returns_an_error_string_and_the_run_goes_on() -> None:
    def boom(query: str) -> str:
        """Always fails."""
        raise ValueError("no luck")

    result, root = _run(
        [
            _code("r = boom('x')\nprint(r)"),
            _code("print(type(r).__name__, r.startswith('[error:'))"),
            FINISH,
        ],
        [Tool.from_function(boom)],
    )
    assert "[error: boom: ValueError: no luck]" in _feedback(root, 1)
    assert not _raised(_feedback(root, 1))
    assert "str True" in _feedback(root, 2)
    assert result.ready
    (call,) = result.trace.of_type(ToolCall)
    assert call.error == "ValueError: no luck"


def test_a_slow_tool_times_out_with_an_error_string() -> None:
    release = threading.Event()

    def slow(query: str) -> str:
        """Takes too long."""
        release.wait(10)
        return "late"

    try:
        started = time.monotonic()
        result, root = _run(
            [_code("print(slow('x'))\nprint('after')"), FINISH],
            [Tool.from_function(slow, timeout=0.3)],
        )
        elapsed = time.monotonic() - started
    finally:
        release.set()
    told = _feedback(root, 1)
    assert "[error: slow: timed out after 0.3 s]" in told and "after" in told
    assert "late" not in told and elapsed < 8
    assert result.ready


@pytest.mark.parametrize("depth", [0, 2])
def test_sub_llm_calls_are_refused(corpus: list[Tool], depth: int) -> None:
    sub = ScriptedModel([], name="scripted-sub")  # any call to it would fail the run
    result, root = _run(
        [
            _code(
                "print(llm_query('hi'))\nprint(llm_batch(['a', 'b']))\n"
                "print(rlm_query('x', context='y'))"
            ),
            FINISH,
        ],
        corpus,
        depth=depth,
        sub=sub,
    )
    told = _feedback(root, 1)
    assert told.count("sub-calls are disabled in this run") == 4, told
    assert "[error: llm_query:" in told and "[error: rlm_query:" in told
    assert sub.calls == [] and result.usage.sub_calls == 0
    assert result.ready


def test_hostile_arguments_come_back_as_error_strings(
    corpus: list[Tool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ctxfold.tools.builtin.GREP_SECONDS", 0.5)
    attacks = [
        "search('x' * 10_000_000)",  # refused in the sandbox: too large to send
        "search('x' * 50_000)",  # refused on the host: longer than a string may be
        "search(123)",
        "search(['a', 'list'])",
        "search('a', k='five')",
        "search('a', k=True)",
        "search('a', k=10**30)",
        "search('a', k=10**5000)",  # too many digits to serialise
        "search('a', k=float('nan'))",
        "search('a', 5, 6)",
        "search(query='a', bogus=1)",
        "search(query='a', __class__=1)",
        "search()",
        "search(b'bytes')",
        "search(object())",
        "search(deep)",  # nested 100,000 deep
        "read('no-such-doc')",
        "read('../../../../etc/passwd')",
        "grep('(unclosed')",
        "grep('(a|aa)+$')",  # catastrophic backtracking: stopped by grep's time limit
    ]
    source = "deep = []\nfor _ in range(100_000):\n    deep = [deep]\n" + "".join(
        f"print({i}, repr({attack})[:160])\n" for i, attack in enumerate(attacks)
    )
    started = time.monotonic()
    result, root = _run([_code(source), _code("print(search('volcano', k=1))"), FINISH], corpus)
    assert time.monotonic() - started < 30
    told = _feedback(root, 1)
    assert not _raised(told), told  # no call raised in the cell
    lines = dict(line.split(" ", 1) for line in told.splitlines() if line[:1].isdigit())
    for i, attack in enumerate(attacks):
        reply = lines[str(i)]
        if attack.startswith("grep('(a|aa)"):
            assert "stopped: the pattern took over 0.5 s" in reply, reply
        else:
            assert reply[1:].startswith("[error: "), (attack, reply)
    assert "arguments too large" in lines["0"] and "too long" in lines["1"]
    assert "must be of type string, not integer" in lines["2"]
    assert "must be of type integer, not bool" in lines["5"]
    assert "out of range" in lines["6"]
    assert "unexpected" in lines["10"] and "unexpected" in lines["11"]
    assert "missing argument 'query'" in lines["12"]
    assert "no document" in lines["17"]
    assert "doc-volcano" in _feedback(root, 2)  # the tools still work afterwards
    assert result.ready
    assert not any(e.type == "worker_restart" for e in result.trace)


def test_tools_survive_being_overwritten_and_a_worker_restart(corpus: list[Tool]) -> None:
    result, root = _run(
        [
            _code("search = None\nprint('x')"),
            _code("print(search('volcano', k=1))"),
            _code("import os\nos._exit(3)"),
            _code("print(read('doc-bakery', length=12))"),
            FINISH,
        ],
        corpus,
    )
    assert "overwrote search; restored" in _feedback(root, 1)
    assert "[doc-volcano]" in _feedback(root, 2)
    assert "fresh one was started" in _feedback(root, 3)
    assert "Varga Bakery" in _feedback(root, 4)
    assert result.ready


def test_the_tools_and_question_set_up_cells_are_not_numbered(corpus: list[Tool]) -> None:
    _, root = _run([_code("print(search('volcano', k=1))\n1 / 0"), FINISH], corpus)
    told = _feedback(root, 1)
    assert "[doc-volcano]" in told and '"<cell 1>", line 2' in told


# -- security: the tool path reaches the named tools and nothing else --------------------------

_CALLED: list[str] = []


def secret(query: str = "") -> str:
    """A host function that must never be reachable from the sandbox."""
    _CALLED.append(query)
    return "SECRET"


_WORKER = (
    "w = [c.cell_contents for c in _define_tools.__closure__\n"
    "     if type(c.cell_contents).__name__ == '_Worker'][0]\n"
    "import json\n"
    "def raw(item):\n"
    "    return w.call('tool', [json.dumps(item).encode()])[0]\n"
)


def test_only_the_named_tools_can_be_reached(corpus: list[Tool]) -> None:
    names = [
        "secret",
        "test_codeact.secret",
        "__import__",
        "eval",
        "os.system",
        "_document",
        "run_tool",
        "call_root_tool",
        "search.__globals__",
        "search.function",
        "llm_query",
        "SEARCH",
    ]
    forged = [{"name": n, "arguments": {"query": "q"}} for n in names] + [
        {"name": "search", "arguments": ["q"]},
        {"name": "search", "arguments": {"query": "q", "__globals__": 1}},
        {"name": 5, "arguments": {}},
        {"name": "x" * 10_000, "arguments": {}},
        {"arguments": {"query": "q"}},
        "search",
    ]
    source = _WORKER + "".join(
        f"print({i}, raw({item!r})[:120])\n" for i, item in enumerate(forged)
    )
    # Code may also make itself stubs for any name: calling them reaches no host function.
    source += (
        "_define_tools(json.dumps([{'name': 'secret', 'params': ['query']},"
        " {'name': 'eval', 'params': ['query']}]))\n"
        "print('stub', secret('q'), eval('1+1'))\n"
    )
    _, root = _run([_code(source), FINISH], corpus)
    told = _feedback(root, 1)
    assert not _raised(told), told
    lines = dict(line.split(" ", 1) for line in told.splitlines() if line[:1].isdigit())
    assert len(lines) == len(forged)
    for i in range(len(names)):
        assert (
            "no tool named" in lines[str(i)]
            and "the tools are: search, read, grep" in lines[str(i)]
        ), lines[str(i)]
    assert "arguments must be a dict" in lines[str(len(names))]
    assert "unexpected argument '__globals__'" in lines[str(len(names) + 1)]
    assert all("invalid tool call" in lines[str(i)] for i in range(len(names) + 2, len(forged)))
    stub = next(line for line in told.splitlines() if line.startswith("stub"))
    assert stub.count("no tool named") == 2 and "SECRET" not in told and "2" not in stub
    assert _CALLED == []


def test_a_run_without_root_tools_answers_no_tool_call(tmp_path: Path) -> None:
    root = ScriptedModel(
        [
            _code(
                "try:\n    search('x')\nexcept NameError as e:\n    print('NameError', e)\n"
                + _WORKER
                + "print(raw({'name': 'search', 'arguments': {'query': 'volcano'}}))"
            ),
            FINISH,
        ]
    )
    tools = corpus_tools(_write_corpus(CORPUS, tmp_path), cache_dir=tmp_path / "cache")
    rlm = RLM(model=root, budget=Budget(iterations=2, depth=1), tools=tools)  # sub-LLM tools only
    result = rlm.run("q", CORPUS)
    told = root.calls[1][-1]["content"]
    assert "NameError" in told
    assert "[error: search: no tool named 'search'; the tools are: none in this run]" in told
    assert result.trace.of_type(ToolCall)[0].error is not None


def test_a_deeply_nested_frame_does_not_crash_the_host(corpus: list[Tool]) -> None:
    source = (
        _WORKER
        + "w._channel.send_raw(b'[' * 200_000 + b']' * 200_000)\n"
        + "print(raw({'name': 'search', 'arguments': {'query': 'volcano', 'k': 1}})[:20])"
    )
    result, root = _run([_code(source), FINISH], corpus)
    assert "1. [doc-volcano]" in _feedback(root, 1)
    assert result.ready


def test_tool_names_that_would_shadow_the_repl_are_refused() -> None:
    def tool(query: str) -> str:
        """x"""
        return query

    for name in ("print", "context", "context_3", "answer", "llm_query", "FINAL", "lambda"):
        with pytest.raises(CtxfoldError):
            check_root_tools([Tool(name=name, description="", parameters={}, function=tool)])
    twice = Tool.from_function(tool)
    with pytest.raises(CtxfoldError, match="share"):
        check_root_tools([twice, twice])


def test_check_arguments_follows_the_schema() -> None:
    def pick(mode: str, n: int = 1, ratio: float = 0.5, flag: bool = False) -> str:
        """x"""
        return mode

    tool = Tool.from_function(pick)
    tool = replace(
        tool,
        parameters={
            **tool.parameters,
            "properties": {**tool.parameters["properties"], "mode": {"enum": ["a", "b"]}},
        },
    )
    assert check_arguments(tool, {"mode": "a", "n": 3.0, "ratio": 2}) == {
        "mode": "a",
        "n": 3,
        "ratio": 2,
    }
    assert "one of" in str(check_arguments(tool, {"mode": "c"}))
    assert "integer" in str(check_arguments(tool, {"mode": "a", "n": 2.5}))
    assert "boolean" in str(check_arguments(tool, {"mode": "a", "flag": 1}))
    assert "plain JSON" in str(check_arguments(tool, {"mode": "a", "ratio": float("inf")}))
    assert "dict" in str(check_arguments(tool, ["a"]))


# -- the bench method ---------------------------------------------------------------------------


def test_codeact_bm25_produces_a_research_row(tmp_path: Path) -> None:
    spec = BenchSpec(task="research", methods=("codeact_bm25",), lengths=(2000,), n=1, seed=2)
    BenchSpec(task="research", methods=("base", "codeact_bm25", "rlm_tools"), lengths=(2000,))
    from ctxfold.bench.runner import instances

    inst = next(instances(spec))
    first_hop, name = inst.meta["chain"][0], inst.meta["chain_entities"][0]

    def model(messages: list[Message]) -> str:
        last = messages[-1]["content"]
        if f"[{first_hop}]" in last:
            return _code(f"answer['content'] = {json.dumps(inst.gold)}\nanswer['ready'] = True")
        return _code(f"print(search({json.dumps(name)}, k=3))")

    root = ScriptedModel(model, name="scripted")
    (row,) = run_bench(spec, tmp_path / "r.jsonl", root=root, sub=root)
    assert row["method"] == "codeact_bm25" and row["error"] is None, row
    assert row["score"] == 1.0 and row["ready"] is True and row["iterations"] == 2
    assert row["sub_calls"] == 0 and row["root_input_tokens"] > 0
    assert row["extra"]["stop_reason"] == "ready"
