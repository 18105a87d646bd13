"""Small pure units: code extraction, budgets, context descriptions, traces, usage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ctxfold
from ctxfold.budget import BudgetMeter
from ctxfold.context import input_name, prepare_contexts, shown_names
from ctxfold.engine import extract_code
from ctxfold.models import ScriptedModel, TokenUsage
from ctxfold.trace import AnswerUpdate, RunEnd, Trace
from ctxfold.usage import UsageMeter


def test_extract_tagged_blocks_in_order() -> None:
    reply = "a\n```python\nx = 1\n```\ntext\n```repl\ny = 2\n```\n```json\n{}\n```"
    assert extract_code(reply) == ["x = 1", "y = 2"]


def test_extract_untagged_block_only_if_it_parses_and_no_tagged_one() -> None:
    assert extract_code("```\nprint(1)\n```") == ["print(1)"]
    assert extract_code("```\nThe answer is 42.\n```") == []
    assert extract_code("no code here") == []


def test_extract_unclosed_fence_runs_to_end() -> None:
    assert extract_code("```python\nprint(1)\nprint(2)") == ["print(1)\nprint(2)"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"iterations": 0},
        {"iterations": 1.5},
        {"depth": -1},
        {"tokens": -5},
        {"usd": "1"},
        {"cell_seconds": 0},
        {"seconds": -1},
        {"iterations": True},
    ],
)
def test_budget_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ctxfold.BudgetError):
        ctxfold.Budget(**kwargs)


def test_budget_defaults_match_the_contract() -> None:
    b = ctxfold.Budget()
    assert (b.iterations, b.depth, b.tokens, b.usd, b.seconds, b.cell_seconds) == (
        30,
        1,
        None,
        None,
        None,
        120,
    )
    assert (b.sub_calls, b.max_errors) == (None, None)
    with pytest.raises(AttributeError):
        b.iterations = 3  # type: ignore[misc]


def test_meter_reports_first_spent_limit() -> None:
    meter = BudgetMeter(ctxfold.Budget(tokens=100, sub_calls=1))
    assert meter.exhausted() is None
    assert meter.reserve_sub_call() is True
    assert meter.reserve_sub_call() is False
    assert meter.exhausted() == "sub_calls"
    meter.add_usage(150, None)
    assert meter.exhausted() == "tokens"
    assert meter.remaining()["tokens"] == 0


def test_usage_rolls_up_by_role_model_and_depth() -> None:
    meter = UsageMeter()
    meter.record(root=True, depth=0, model="a", usage=TokenUsage(10, 2, cost_usd=0.5))
    meter.record(root=False, depth=1, model="b", usage=TokenUsage(5, 1))
    meter.record(root=True, depth=1, model="a", usage=TokenUsage(3, 3, estimated=True))
    u = meter.snapshot()
    assert (u.root_calls, u.root_input_tokens, u.root_output_tokens) == (1, 10, 2)
    assert (u.sub_calls, u.sub_input_tokens, u.sub_output_tokens) == (2, 8, 4)
    assert u.per_model["a"].calls == 2 and u.per_depth[1].calls == 2
    assert u.cost_usd == 0.5 and u.sub.estimated
    assert ctxfold.Usage.from_dict(json.loads(json.dumps(u.to_dict()))) == u


def test_context_descriptions_are_bounded(tmp_path: Path) -> None:
    short = prepare_contexts("hello", workdir=tmp_path)[0]
    long = prepare_contexts("word " * 200_000, workdir=tmp_path)[0]
    assert "5 characters" in short.description
    assert "1,000,000 characters" in long.description
    assert len(long.description) < 500
    data = prepare_contexts({"a": [1, 2]}, workdir=tmp_path)[0]
    assert data.spec["kind"] == "json_file" and "dict with 1 keys" in data.description


def test_inputs_are_described_in_fields_not_one_string(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("A", encoding="utf-8")
    text, folder = prepare_contexts(contexts=["hi there", tmp_path / "docs"], workdir=tmp_path)
    assert (text.name, text.kind, text.size_chars) == ("context_0", "text_file", 8)
    assert text.shape == "str, 8 characters in 1 lines"
    assert text.preview == 'Preview: "hi there"'
    assert text.description == f"{text.shape}. {text.preview}"
    assert (folder.name, folder.kind) == ("context_1", "folder")
    assert "Preview" not in folder.shape and "Keys" not in folder.shape
    assert folder.preview == "Keys: 'a.txt'"


def test_the_naming_rule() -> None:
    assert shown_names(1) == ["context"]
    assert shown_names(3) == ["context_0", "context_1", "context_2"]
    assert input_name(4) == "context_4"


def test_one_input_s_shape_is_the_system_prompt_s_summary(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "secret-name.txt").write_text("A", encoding="utf-8")
    seen: list[str] = []

    def reply(messages: list[dict[str, str]]) -> str:
        seen.append(messages[0]["content"])
        return "```python\nanswer['content'] = 'x'\nanswer['ready'] = True\n```"

    with ctxfold.RLM(ScriptedModel(reply)) as rlm:
        rlm.run("q", tmp_path / "docs")
    assert "for folder 'docs': 1 files" in seen[0]
    assert "secret-name.txt" not in seen[0]  # the keys are in the task message, not the summary


def test_folder_context_lists_text_files_and_skips_binary(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("print(1)\n")
    (tmp_path / "b.md").write_text("# doc\n")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\x00\x00")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref\n")
    work = tmp_path / "work"
    work.mkdir()
    ctx = prepare_contexts(tmp_path / "src", workdir=work)[0]
    assert ctx.spec["files"] == ["a.py"]
    ctx = prepare_contexts(tmp_path, workdir=work)[0]
    assert ctx.spec["files"] == ["b.md", "src/a.py"]
    assert "1 binary" in ctx.description


def test_context_errors(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 10)
    with pytest.raises(ctxfold.ContextError, match="not UTF-8"):
        prepare_contexts(bad, workdir=tmp_path)
    with pytest.raises(ctxfold.ContextError, match="JSON"):
        prepare_contexts([object()], workdir=tmp_path)
    with pytest.raises(ctxfold.ContextError, match="not both"):
        prepare_contexts("a", ["b"], workdir=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ctxfold.ContextError, match="no readable text"):
        prepare_contexts(empty, workdir=tmp_path)


def test_trace_load_skips_a_torn_last_line(tmp_path: Path) -> None:
    trace = Trace(tmp_path / "t.jsonl")
    trace.emit(AnswerUpdate(turn=1, content="x", ready=False))
    trace.close()
    with (tmp_path / "t.jsonl").open("a") as fh:
        fh.write('{"type": "run_e')
    loaded = Trace.load(tmp_path / "t.jsonl")
    assert len(loaded) == 1 and loaded.of_type(AnswerUpdate)[0].content == "x"
    with pytest.raises(ctxfold.CtxfoldError, match="cannot read"):
        Trace.load(tmp_path / "nope.jsonl")


def test_trace_listeners_see_events_and_cannot_break_the_run() -> None:
    trace = Trace()
    seen = []
    trace.subscribe(seen.append)
    trace.subscribe(lambda e: 1 / 0)
    trace.emit(RunEnd(answer="a", ready=True, stop_reason="ready", usage={}, seconds=1.0))
    assert len(seen) == 1 and len(trace) == 1


@pytest.mark.parametrize("profile", ["concise", "small"])
def test_system_prompt_drops_sub_calls_when_disabled(profile: str) -> None:
    from ctxfold import prompts

    kw = {"context_summary": "str", "output_limit": 8000, "sub_window": 90_000}
    on = prompts.system_prompt(profile, **kw)
    off = prompts.system_prompt(profile, sub_calls=False, **kw)
    assert "llm_batch" in on and "90,000" in on
    assert "llm_batch" not in off and "llm_query" not in off
    assert "$" not in on and "$" not in off
