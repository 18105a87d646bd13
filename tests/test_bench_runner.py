"""The bench runner, methods and report, driven by scripted models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ctxfold.bench import BenchSpec, load_rows, markdown, plots, run_bench, summarise
from ctxfold.bench.methods import base
from ctxfold.bench.runner import instances
from ctxfold.bench.tasks import get_task
from ctxfold.errors import CtxfoldError, ModelError
from ctxfold.models import Message, ScriptedModel
from ctxfold.trace import RunEnd, Trace


def _needle_finder(messages: list[Message]) -> str:
    """A root that answers S-NIAH: with the text pasted (base) or with code (rlm)."""
    text = messages[-1]["content"]
    found = re.search(r"special magic numbers? for [\w-]+ is: (\d+)", text)
    if found:
        return f"The number is {found.group(1)}."
    if "Output" in text:
        return '```python\nanswer["content"] = hits[0]\nanswer["ready"] = True\n```'
    return "```python\nimport re\nhits = re.findall(r'is: (\\d{7})', context)\nprint(hits)\n```"


def test_run_bench_writes_rows_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    spec = BenchSpec(task="sniah", methods=("base", "rlm"), lengths=(2000,), n=2, seed=1)
    root = ScriptedModel(_needle_finder, name="scripted", context_window=8000)
    totals: list[int] = []
    rows = run_bench(spec, out, root=root, sub=root, on_start=totals.append)
    assert totals == [4] and len(rows) == 4
    assert {r["method"] for r in rows} == {"base", "rlm"}
    assert all(r["score"] == 1.0 and r["error"] is None for r in rows), rows
    rlm_rows = [r for r in rows if r["method"] == "rlm"]
    assert all(r["iterations"] == 2 and r["ready"] for r in rlm_rows)
    transcript = rlm_rows[0]["extra"]["transcript"]  # the root turns, to read when a row fails
    assert transcript[0].startswith("[1] model: ```python") and "re.findall" in transcript[0]
    assert transcript[1].startswith("[1] ctxfold: Output") and len(transcript) == 3
    assert all(r["root_input_tokens"] > 0 for r in rows)
    # each RLM run's trace is saved beside the results, named in its row (for `ctxfold view`)
    for row in rlm_rows:
        trace = Trace.load(tmp_path / row["trace"])
        assert trace.of_type(RunEnd)[0].answer == row["answer"]
    assert all("trace" not in r for r in rows if r["method"] == "base")
    # A second run over the same file does nothing new.
    assert run_bench(spec, out, root=root, sub=root) == []
    assert len(load_rows(out)) == 4


def test_base_cuts_again_when_the_model_counts_more_tokens() -> None:
    inst = get_task("sniah").generate(n=1, length=20_000, seed=3)[0]
    sizes: list[int] = []

    def root(messages: list[Message]) -> str:
        sizes.append(len(messages[-1]["content"]))
        if len(sizes) < 3:  # as llama.cpp says it
            raise ModelError("HTTP 400: request (8429 tokens) exceeds the available context size")
        return "7"

    result = base(inst, ScriptedModel(root, context_window=4000), ScriptedModel(["x"]), 1)
    assert result.answer == "7" and result.truncated
    assert sizes[1] < sizes[0] * 0.9 and sizes[2] < sizes[1] * 0.9
    with pytest.raises(ModelError, match="server on fire"):  # other errors are not retried
        base(inst, ScriptedModel([ModelError("server on fire")]), ScriptedModel(["x"]), 1)


def test_base_cuts_input_to_the_window_and_says_so() -> None:
    task = get_task("sniah")
    inst = task.generate(n=1, length=20_000, seed=3)[0]
    seen: list[int] = []

    def root(messages: list[Message]) -> str:
        seen.append(len(messages[-1]["content"]))
        return "no idea"

    result = base(inst, ScriptedModel(root, context_window=4000), ScriptedModel(["x"]), 1)
    assert result.truncated
    assert seen[0] < 4000 * 5  # about the window, far below the 20K-token input


def test_failing_instance_becomes_an_error_row(tmp_path: Path) -> None:
    spec = BenchSpec(task="math", methods=("base",), lengths=(1000,), n=1)
    broken = ScriptedModel([RuntimeError("server on fire")])
    rows = run_bench(spec, tmp_path / "r.jsonl", root=broken, sub=broken)
    assert rows[0]["score"] == 0.0 and "server on fire" in rows[0]["error"]


def test_report_table_and_plots(tmp_path: Path) -> None:
    rows = [
        {
            "task": "t",
            "method": "base",
            "requested_length": 8000,
            "score": 0.0,
            "root_input_tokens": 8000,
            "truncated": True,
            "error": None,
        },
        {
            "task": "t",
            "method": "base",
            "requested_length": 8000,
            "score": 1.0,
            "root_input_tokens": 6000,
            "truncated": True,
            "error": None,
        },
        {
            "task": "t",
            "method": "rlm",
            "requested_length": 8000,
            "score": 1.0,
            "root_input_tokens": 900,
            "error": None,
        },
        {"task": "t", "method": "rlm", "requested_length": 32000, "score": 0.0, "error": "boom"},
    ]
    table = summarise(rows)
    first = table[0]
    assert first["method"] == "base" and first["truncated"]
    assert first["score"] == 0.5 and first["root_in"] == 7000
    assert table[-1]["errors"] == 1
    md = markdown(rows)
    assert "| t | 8,000 | base* | 2 | 50.0 |" in md
    images = plots(rows, tmp_path)
    assert [p.name for p in images] == ["t.png"] and images[0].stat().st_size > 1000
    json.dumps(table)


def test_bad_spec_is_a_clear_error() -> None:
    with pytest.raises(CtxfoldError, match="unknown method"):
        BenchSpec(task="sniah", methods=("magic",), lengths=(1000,))
    with pytest.raises(CtxfoldError):
        get_task("nope")


def test_tool_methods_search_the_input_as_a_corpus(tmp_path: Path) -> None:
    """agent_bm25: the root searches itself; rlm_tools: the root delegates to a searching sub."""
    spec = BenchSpec(
        task="research", methods=("agent_bm25", "rlm_tools"), lengths=(2000,), n=1, seed=2
    )
    inst = next(instances(spec))
    name = inst.meta["chain_entities"][0]
    searched: list[str] = []

    def model(messages: list[Message]) -> str:
        last = messages[-1]["content"]
        if last.startswith("Tool result") or "[search]" in last or "Results for" in last:
            searched.append(last)
            return f"The answer is {inst.gold}."
        if "Question:" in last and "```python" not in last and "Use the tools" in last:
            return f'```tool\n{{"name": "search", "arguments": {{"query": "{name}"}}}}\n```'
        if last.startswith("How"):  # the sub-call made by the root below
            return f'```tool\n{{"name": "search", "arguments": {{"query": "{name}"}}}}\n```'
        if "Output" in last:
            return '```python\nanswer["content"] = r\nanswer["ready"] = True\n```'
        return f'```python\nr = llm_query("How? {inst.question}")\nprint(r)\n```'

    root = ScriptedModel(model, name="scripted")
    rows = run_bench(spec, tmp_path / "r.jsonl", root=root, sub=root)
    by_method = {r["method"]: r for r in rows}
    assert by_method["agent_bm25"]["error"] is None, by_method["agent_bm25"]
    assert by_method["rlm_tools"]["error"] is None, by_method["rlm_tools"]
    assert by_method["agent_bm25"]["iterations"] >= 2  # a tool turn, then the answer
    assert all(r["score"] == 1.0 for r in rows), rows
    assert len(searched) == 2  # each method's model saw a search result before answering
