"""Typed answers (schema=) and citations (cite()), with scripted models and a real worker."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

import ctxfold
from ctxfold.models import ScriptedModel
from ctxfold.trace import Guard, RunEnd


def code(src: str) -> str:
    return f"```python\n{src}\n```"


def run(replies: list[str], context: object, **kw: object) -> ctxfold.Result:
    model = ScriptedModel(replies)
    with ctxfold.RLM(model) as rlm:
        return rlm.run("q", context, **kw)  # type: ignore[arg-type]


class Person(pydantic.BaseModel):
    name: str
    age: int


def test_a_wrong_typed_answer_is_feedback_then_the_right_one_is_the_value() -> None:
    model = ScriptedModel(
        [
            code("print(context)\nanswer['content'] = {'name': 'Bob'}\nanswer['ready'] = True"),
            code("answer['content'] = {'name': 'Bob', 'age': '42'}\nanswer['ready'] = True"),
        ]
    )
    with ctxfold.RLM(model) as rlm:
        result = rlm.run("who?", "Bob is 42", schema=Person)
    assert result.ready and result.iterations == 2
    assert result.value == Person(name="Bob", age=42)
    assert result.answer == '{"name": "Bob", "age": 42}'
    told = model.calls[1][-1]["content"]
    assert "does not fit the required schema" in told and "age: Field required" in told
    assert [g.reason for g in result.trace.of_type(Guard)] == ["answer does not fit the schema"]
    assert '"age"' in model.calls[0][0]["content"]  # the system prompt shows the schema


def test_plain_types_and_json_schema_dicts() -> None:
    listed = run(
        [code("print(1)\nanswer['content'] = ['a', 'b']\nanswer['ready'] = True")],
        "x",
        schema=list[str],
    )
    assert listed.value == ["a", "b"]
    number = run(
        [code("print(1)\nanswer['content'] = '7'\nanswer['ready'] = True")], "x", schema=int
    )
    assert number.value == 7 and number.answer == "7"
    shape = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    bad_then_good = run(
        [
            code("print(1)\nanswer['content'] = {'n': 'many'}\nanswer['ready'] = True"),
            code("answer['content'] = {'n': 3}\nanswer['ready'] = True"),
        ],
        "x",
        schema=shape,
    )
    assert bad_then_good.value == {"n": 3} and bad_then_good.iterations == 2


def test_a_run_that_never_fits_ends_not_ready_with_no_value() -> None:
    reply = code("print(1)\nanswer['content'] = 'no number'\nanswer['ready'] = True")
    model = ScriptedModel(lambda messages: reply)
    with ctxfold.RLM(model, budget=ctxfold.Budget(iterations=2)) as rlm:
        result = rlm.run("q", "x", schema=int)
    assert not result.ready and result.value is None and result.stop_reason == "iterations"


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (3, "schema must be a type"),
        ("int", "schema must be a type"),
        ({"type": "no-such-type"}, "not a valid JSON schema"),
        (object(), "not a type pydantic can check"),
    ],
)
def test_bad_schemas_are_one_line_errors(schema: object, message: str) -> None:
    with (
        ctxfold.RLM(ScriptedModel(["never"])) as rlm,
        pytest.raises(ctxfold.CtxfoldError, match=message),
    ):
        rlm.run("q", "x", schema=schema)


TEXT = "Alice lives in Paris. Bob lives in Rome.\nCarol lives in Oslo.\n"


def test_character_citations_are_quoted_by_the_host() -> None:
    result = run(
        [
            code(
                "i = context.find('Bob')\nquote = cite(i, i + 20)\nprint(quote)\n"
                "answer['content'] = 'Rome'\nanswer['ready'] = True"
            )
        ],
        TEXT,
    )
    [citation] = result.citations
    assert citation.quote.startswith("Bob lives in Rome.")
    assert (citation.source, citation.start, citation.end) == ("context", 22, 42)
    assert citation.quote == TEXT[22:42] and citation.where == "context[22:42]"
    # shown in its place: the input around it, and recorded so in the trace
    assert (citation.before, citation.after) == (TEXT[:22], TEXT[42:342])
    [recorded] = result.trace.of_type(RunEnd)[0].citations
    assert recorded["where"] == "context[22:42]" and recorded["before"] == TEXT[:22]


def test_wrong_spans_raise_in_the_cell_and_forged_ones_are_dropped() -> None:
    replies = [
        code("cite(10, 5000)"),
        code("cite(-1, 3)"),
        code(
            "print(cite(0, 5))\n"
            "answer['sources'].append({'source': 'context', 'start': 50, 'end': 9999})\n"
            "answer['sources'].append({'source': 'nope', 'start': 0, 'end': 1})\n"
            "answer['content'] = 'Alice'\nanswer['ready'] = True"
        ),
    ]
    model = ScriptedModel(replies)
    with ctxfold.RLM(model) as rlm:
        result = rlm.run("q", TEXT)
    assert "ValueError: cite: 10:5000 is not a span of context" in model.calls[1][-1]["content"]
    assert "ValueError" in model.calls[2][-1]["content"]
    assert [c.quote for c in result.citations] == ["Alice"]  # the made-up spans are left out


def test_line_citations_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("import os\n\ndef main():\n    return 1\n")
    result = run(
        [
            code(
                "print(cite('app.py', 3, 4))\nanswer['content'] = 'main returns 1'\n"
                "answer['ready'] = True"
            )
        ],
        tmp_path / "src",
    )
    [citation] = result.citations
    assert citation.quote == "def main():\n    return 1\n"
    assert citation.where == "app.py:3-4"
    assert (citation.before, citation.after) == ("import os\n\n", "")


def test_the_system_prompt_asks_for_citations_where_they_fit(tmp_path: Path) -> None:
    def system(context: object, profile: str) -> str:
        model = ScriptedModel([code("print(1)\nanswer['content'] = 'x'\nanswer['ready'] = True")])
        with ctxfold.RLM(model, prompt_profile=profile) as rlm:
            rlm.run("q", context)
        return model.calls[0][0]["content"]

    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    assert "`cite(start, end)`" in system("text", "concise")
    assert "`cite(path, first_line, last_line)`" in system(tmp_path, "concise")
    assert "cite(" not in system({"json": 1}, "concise")  # data has no spans to cite
    assert "cite(" not in system("text", "small")
