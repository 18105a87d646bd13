"""The root loop, driven by scripted models, with a real sandbox worker process."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

import ctxfold
from ctxfold.models import Message, ScriptedModel
from ctxfold.trace import (
    AnswerUpdate,
    BudgetStop,
    Cell,
    Guard,
    RootResponse,
    SubcallEnd,
    WorkerRestart,
)


def code(src: str) -> str:
    return f"Let me run this.\n```python\n{src}\n```"


def make_rlm(replies, sub=None, **kw) -> ctxfold.RLM:
    root = ScriptedModel(replies, name="root")
    sub_model = sub if sub is not None else ScriptedModel(lambda m: "sub-answer", name="sub")
    return ctxfold.RLM(model=root, sub_model=sub_model, **kw)


def test_answer_dict_finishes_run(no_orphans) -> None:
    rlm = make_rlm(
        [
            code("print(len(context))"),
            code('answer["content"] = str(len(context))\nanswer["ready"] = True'),
        ]
    )
    result = rlm.run("How long is the input?", context="x" * 1234)
    assert result.ready and result.answer == "1234"
    assert result.stop_reason == "ready"
    assert result.iterations == 2
    assert result.usage.root_calls == 2


def test_state_persists_and_rebinding_answer_is_adopted() -> None:
    rlm = make_rlm(
        [
            code("n = context.count('a')\nprint(n)"),
            code('answer = {"content": f"{n} a", "ready": True}'),
        ]
    )
    result = rlm.run("count a", context="banana")
    assert result.answer == "3 a" and result.ready


def test_final_var_protocol() -> None:
    rlm = make_rlm([code("x = context.upper()\nprint(x)"), code("FINAL_VAR('x')")])
    result = rlm.run("upper", context="abc")
    assert result.answer == "ABC" and result.ready


def test_ready_refused_before_any_output_was_seen() -> None:
    rlm = make_rlm(
        [
            code('answer["content"] = "guess"\nanswer["ready"] = True'),
            code("print(context[:5])"),
            code('answer["ready"] = True'),
        ]
    )
    result = rlm.run("q", context="hello world")
    assert result.ready and result.answer == "guess" and result.iterations == 3
    assert any("ready refused" in g.reason for g in result.trace.of_type(Guard))
    root = rlm.model
    assert isinstance(root, ScriptedModel)
    assert "reset to False" in root.calls[1][-1]["content"]


def test_reply_without_code_gets_a_nudge() -> None:
    rlm = make_rlm(["The answer is 42.", code("print(1)"), code('FINAL("42")')])
    result = rlm.run("q", context="data")
    root = rlm.model
    assert isinstance(root, ScriptedModel)
    assert "no ```python code block" in root.calls[1][-1]["content"]
    assert result.answer == "42"


def test_iteration_budget_returns_best_answer_not_ready() -> None:
    rlm = make_rlm(
        [code('answer["content"] = "partial"\nprint("working")')] * 3,
        budget=ctxfold.Budget(iterations=3),
    )
    result = rlm.run("q", context="data")
    assert not result.ready and result.answer == "partial"
    assert result.stop_reason == "iterations"
    assert result.trace.of_type(BudgetStop)[0].reason == "iterations"


def test_budget_end_without_answer_asks_root_for_final_words() -> None:
    rlm = make_rlm(
        [code("print('looking')"), code("print('still looking')"), "My best guess: 7"],
        budget=ctxfold.Budget(iterations=2),
    )
    result = rlm.run("q", context="data")
    assert not result.ready
    assert result.answer == "My best guess: 7"
    root = rlm.model
    assert isinstance(root, ScriptedModel)
    assert "budget is spent" in root.calls[-1][-1]["content"]


def test_errors_in_cells_are_reported_and_max_errors_stops() -> None:
    rlm = make_rlm(
        [code("1/0"), code("undefined_name"), code("print('never')")],
        budget=ctxfold.Budget(max_errors=2),
    )
    result = rlm.run("q", context="data")
    assert result.stop_reason == "max_errors"
    root = rlm.model
    assert isinstance(root, ScriptedModel)
    assert "ZeroDivisionError" in root.calls[1][-1]["content"]
    assert len(result.trace.of_type(Cell)) == 2


def test_cell_timeout_is_reported_and_run_goes_on() -> None:
    rlm = make_rlm(
        [code("x = 5\nwhile True: pass"), code("print(x)"), code('FINAL("done")')],
        budget=ctxfold.Budget(cell_seconds=1),
    )
    result = rlm.run("q", context="data")
    assert result.answer == "done"
    cells = result.trace.of_type(Cell)
    assert cells[0].timed_out
    assert cells[1].stdout.strip() == "5"  # state survived the interrupt
    root = rlm.model
    assert isinstance(root, ScriptedModel)
    assert "time limit" in root.calls[1][-1]["content"]


def test_worker_crash_restarts_and_model_is_told(no_orphans) -> None:
    rlm = make_rlm(
        [
            code("y = 1\nimport os\nos._exit(9)"),
            code("print(len(context), 'y' in globals())"),
            code('FINAL("ok")'),
        ]
    )
    result = rlm.run("q", context="abcdef")
    assert result.answer == "ok"
    assert result.trace.of_type(WorkerRestart)
    cells = result.trace.of_type(Cell)
    assert cells[1].stdout.split() == ["6", "False"]
    root = rlm.model
    assert isinstance(root, ScriptedModel)
    assert "variable you made is lost" in root.calls[1][-1]["content"]


def test_scaffold_overwrite_is_restored() -> None:
    rlm = make_rlm(
        [
            code("llm_query = None\ncontext = 'gone'\nprint('x')"),
            code("print(llm_query('hi'), len(context))"),
            code('FINAL("ok")'),
        ]
    )
    result = rlm.run("q", context="original")
    cells = result.trace.of_type(Cell)
    assert set(cells[0].restored) >= {"llm_query", "context"}
    assert cells[1].stdout.split() == ["sub-answer", "8"]


def test_llm_batch_goes_through_the_broker_and_is_accounted() -> None:
    def sub(messages: list[Message]) -> str:
        return messages[-1]["content"].upper()

    rlm = make_rlm(
        [
            code("print(llm_batch(['a', 'b', {'prompt': 'c'}, 42]))"),
            code('FINAL("done")'),
        ],
        sub=ScriptedModel(sub, name="sub"),
    )
    result = rlm.run("q", context="data")
    out = result.trace.of_type(Cell)[0].stdout
    assert "'A', 'B', 'C'" in out and "error" in out.lower()  # the bad item fails alone
    assert result.usage.sub_calls == 3
    assert result.usage.per_depth[1].calls == 3
    assert result.usage.per_model["sub"].calls == 3
    assert len(result.trace.of_type(SubcallEnd)) == 3


def test_sub_call_budget_turns_extra_calls_into_errors() -> None:
    rlm = make_rlm(
        [code("r = llm_batch(['a'] * 5)\nprint(sum('error' in x for x in r))"), code('FINAL("x")')],
        budget=ctxfold.Budget(sub_calls=2),
    )
    result = rlm.run("q", context="data")
    assert result.trace.of_type(Cell)[0].stdout.strip() == "3"
    assert result.usage.sub_calls == 2


def test_a_token_budget_stops_a_big_batch_within_one_call_of_its_limit() -> None:
    sub = ScriptedModel(lambda m: "fine", name="sub")
    rlm = make_rlm(
        [
            code("r = llm_batch([f'item {i}' for i in range(500)])\nprint(r.count('fine'))"),
            code('FINAL("x")'),
        ],
        sub=sub,
        budget=ctxfold.Budget(tokens=3000),
    )
    result = rlm.run("q", context="data")
    served = [e for e in result.trace.of_type(SubcallEnd) if not e.error]
    turns = [e.input_tokens + e.output_tokens for e in result.trace.of_type(RootResponse)]
    root = result.usage.root.total_tokens
    last_word = root - sum(turns)  # asked once the budget is spent, whatever it costs
    biggest_sub = max(e.input_tokens + e.output_tokens for e in served)
    # Every call claims its worst case first: the calls end within one call of the limit ...
    assert root - last_word + result.usage.sub.total_tokens <= 3000 + biggest_sub
    assert result.stop_reason == "tokens" and last_word > 0
    # ... the batch served what the budget allowed and refused the rest with an error string.
    assert len(served) == int(result.trace.of_type(Cell)[0].stdout) == result.usage.sub_calls
    assert result.usage.sub.total_tokens >= 3000 - turns[0] - biggest_sub
    assert 50 < len(served) < 500


def test_unknown_sub_model_name_is_refused() -> None:
    rlm = make_rlm(
        [code("print(llm_query('x', model='openai:gpt@http://evil'))"), code('FINAL("x")')]
    )
    result = rlm.run("q", context="data")
    assert "unknown model" in result.trace.of_type(Cell)[0].stdout


def test_models_lists_every_model_code_may_pick_read_only() -> None:
    extra = ScriptedModel(lambda m: "extra-answer", name="extra")
    rlm = make_rlm([code('FINAL("x")')], models={"big": extra})
    assert {name: model.name for name, model in rlm.models.items()} == {
        "root": "root",
        "sub": "sub",
        "big": "extra",
    }
    with pytest.raises(TypeError):
        rlm.models["other"] = extra  # type: ignore[index]
    rlm.close()


def test_rlm_query_runs_a_child_engine_when_depth_allows() -> None:
    def root(messages: list[Message]) -> str:
        task = messages[1]["content"]
        if "CHILD" in task:  # the child's task message
            return code('FINAL("child saw " + str(len(context)))')
        if len(messages) == 2:
            return code("print(rlm_query('CHILD task', context='12345'))")
        return code('FINAL("root done")')

    rlm = ctxfold.RLM(model=ScriptedModel(root, name="root"), budget=ctxfold.Budget(depth=2))
    result = rlm.run("q", context="data")
    top_cells = [c for c in result.trace.of_type(Cell) if c.depth == 0]
    child_cells = [c for c in result.trace.of_type(Cell) if c.depth == 1]
    assert top_cells[0].stdout.strip() == "child saw 5"
    assert len(child_cells) == 2  # the child's first FINAL is refused once: it saw no output
    assert result.usage.per_depth[1].calls >= 1  # the child's root call is at depth 1
    assert result.answer == "root done"


def test_rlm_query_falls_back_to_llm_query_at_depth_limit() -> None:
    rlm = make_rlm([code("print(rlm_query('x', context='ctx'))"), code('FINAL("y")')])
    result = rlm.run("q", context="data")
    assert result.trace.of_type(Cell)[0].stdout.strip() == "sub-answer"


def test_trace_streams_jsonl_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    rlm = make_rlm([code("print(1)"), code('answer["content"]="1"; answer["ready"]=True')])
    result = rlm.run("q", context="data", trace=path)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["type"] == "run_start"
    assert json.loads(lines[-1])["type"] == "run_end"
    loaded = ctxfold.Trace.load(path)
    assert [e.type for e in loaded] == [e.type for e in result.trace]
    assert loaded.of_type(AnswerUpdate)[-1].content == "1"
    saved = tmp_path / "copy.jsonl"
    result.trace.save(saved)
    assert saved.read_text() == path.read_text()


def test_several_contexts_become_numbered_variables() -> None:
    rlm = make_rlm(
        [code("print(len(context_0), len(context_1), context is context_0)"), code('FINAL("x")')]
    )
    result = rlm.run("q", contexts=["ab", ["x", "y", "z"]])
    assert result.trace.of_type(Cell)[0].stdout.split() == ["2", "3", "True"]


def test_arun() -> None:
    rlm = make_rlm([code("print(2)"), code('FINAL("2")')])
    result = asyncio.run(rlm.arun("q", context="data"))
    assert result.answer == "2"


def test_root_prompt_size_does_not_grow_with_the_input(tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("line of text\n" * 150)  # about 2 KB
    big = tmp_path / "big.txt"
    chunk = ("line of text number %d with some words in it\n" * 1000).encode()
    with big.open("wb") as fh:
        for _ in range(105_000_000 // len(chunk) + 1):
            fh.write(chunk)
    assert big.stat().st_size >= 100_000_000

    sizes = []
    for path in (small, big):
        rlm = make_rlm([code("print(len(context))"), code('FINAL("x")')])
        result = rlm.run("How many lines?", context=path)
        root = rlm.model
        assert isinstance(root, ScriptedModel)
        sizes.append(sum(len(m["content"]) for m in root.calls[0]))
        assert int(result.trace.of_type(Cell)[0].stdout) == path.stat().st_size
    assert abs(sizes[0] - sizes[1]) < 100, sizes


def test_bad_inputs_raise_one_clear_error(tmp_path: Path, no_orphans) -> None:
    rlm = make_rlm([code("print(1)")])
    with pytest.raises(ctxfold.ContextError, match="not found"):
        rlm.run("q", context=tmp_path / "missing.txt")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(ctxfold.ContextError, match="binary"):
        rlm.run("q", context=binary)
    with pytest.raises(ctxfold.ContextError, match="not supported"):
        rlm.run("q", context=object())
    with pytest.raises(ctxfold.ModelSpecError, match="unknown model spec"):
        ctxfold.RLM(model="gpt:nope")
    with pytest.raises(ctxfold.MissingAPIKeyError, match="OPENAI_API_KEY"):
        ctxfold.RLM(model="openai:gpt-5-mini")
    with pytest.raises(ctxfold.BudgetError):
        ctxfold.Budget(iterations=0)


@pytest.mark.parametrize("option", ["concurrency", "tool_turns", "choice_pack"])
@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "4"])
def test_a_count_option_that_is_not_a_whole_number_is_one_clear_error(
    option: str, bad: object
) -> None:
    with pytest.raises(ctxfold.CtxfoldError, match=f"^{option} must be a whole number >= 1, got "):
        ctxfold.RLM(model=ScriptedModel([code("print(1)")]), **{option: bad})


def test_ready_guard_fires_only_once() -> None:
    rlm = make_rlm([code('FINAL("a")'), code('FINAL("b")'), code('FINAL("c")')])
    result = rlm.run("q", context="data")
    assert result.answer == "b" and result.iterations == 2


def test_best_answer_survives_a_worker_crash() -> None:
    rlm = make_rlm(
        [code('answer["content"] = "kept"\nprint(1)'), code("import os\nos._exit(1)")],
        budget=ctxfold.Budget(iterations=2),
    )
    result = rlm.run("q", context="data")
    assert result.answer == "kept" and not result.ready


def test_final_words_that_echo_the_request_are_no_answer() -> None:
    rlm = make_rlm(
        [code("print('looking')"), "The run's budget is spent (iterations)."],
        budget=ctxfold.Budget(iterations=1),
    )
    result = rlm.run("q", context="data")
    assert result.answer == "" and not result.ready


async def test_concurrent_aruns_all_run_at_once() -> None:
    # Twelve runs meet at a barrier in their first root call: they pass only if all twelve are
    # running together (asyncio's default executor has six threads on two cores).
    meet = threading.Barrier(12, timeout=120)

    def reply(messages: list[Message]) -> str:
        meet.wait()
        return code("FINAL(str(len(context)))")

    rlm = ctxfold.RLM(ScriptedModel(reply, name="root"))
    results = await asyncio.gather(*(rlm.arun("q", context="x" * i) for i in range(12)))
    rlm.close()
    assert [r.answer for r in results] == [str(i) for i in range(12)]


async def test_cancelling_arun_stops_the_run_and_closes_its_sandbox(no_orphans) -> None:
    started = threading.Event()

    def reply(messages: list[Message]) -> str:
        started.set()
        return code("import time\ntime.sleep(0.5)\nprint('turn')")

    trace = ctxfold.Trace()
    rlm = ctxfold.RLM(ScriptedModel(reply, name="root"), budget=ctxfold.Budget(iterations=50))
    task = asyncio.ensure_future(rlm.arun("q", context="data", trace=trace))
    while not started.is_set():
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rlm.close()
    ends = [e for e in trace.events if e.type == "run_end"]
    assert ends and ends[0].stop_reason == "cancelled"
    assert len(trace.of_type(Cell)) < 50
