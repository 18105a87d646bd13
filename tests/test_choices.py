"""Sub-calls with ``choices``: the reply is read back to one choice, asked again once, or fails."""

from __future__ import annotations

import ast
from collections import Counter

import pytest

import ctxfold
from ctxfold.broker import request_key
from ctxfold.choices import (
    check_choices,
    check_notes,
    choice_grammar,
    choice_prompt,
    match_choice,
)
from ctxfold.models import OpenAIModel, ScriptedModel
from ctxfold.sandbox import SubcallItem
from ctxfold.testing.fake_openai import FakeOpenAIServer

LABELS = ["human being", "location", "numeric value", "description and abstract concept"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("location", "location"),
        ("  Location.\n", "location"),
        ('"numeric value"', "numeric value"),
        ("human being: the question asks who", "human being"),
        ("description", "description and abstract concept"),
        ("The label is location.", "location"),
        ("**numeric value**", "numeric value"),
        ("location or human being", None),
        ("entity", None),
        ("", None),
        ("loc", "location"),
        ("lo", None),  # too short to stand for a choice
    ],
)
def test_match_choice_reads_a_reply_back_to_one_choice(reply: str, expected: str | None) -> None:
    assert match_choice(reply, LABELS) == expected


def test_match_choice_prefers_the_longer_choice_a_reply_starts_with() -> None:
    assert match_choice("spam filter", ["spam", "spam filter"]) == "spam filter"
    assert match_choice("spam", ["spam", "spam filter"]) == "spam"
    # "spam" inside the found "spam filter" does not make two matches
    assert match_choice("I think: spam filter", ["spam", "spam filter"]) == "spam filter"


@pytest.mark.parametrize(
    ("choices", "why"),
    [
        ("yes,no", "list of str"),
        (["yes"], "2 to 64"),
        (["yes", 3], "must be a str"),
        (["yes", "Yes"], "twice"),
        (["yes", "a\nb"], "one line"),
        (["yes", "?!"], "letter or digit"),
        (["x" * 201, "no"], "one line"),
        ([str(i) for i in range(65)], "2 to 64"),
    ],
)
def test_check_choices_refuses_what_cannot_be_answered(choices: object, why: str) -> None:
    checked = check_choices(choices)
    assert isinstance(checked, str) and why in checked


def test_choice_grammar_escapes_quotes_and_backslashes() -> None:
    assert choice_grammar(['say "hi"', "a\\b"]) == r'root ::= "say \"hi\"" | "a\\b"'


def test_request_key_depends_on_choices_and_is_unchanged_without_them() -> None:
    plain = SubcallItem(prompt="p")
    assert request_key("llm", plain) == request_key("llm", SubcallItem(prompt="p"))
    assert request_key("llm", plain) != request_key(
        "llm", SubcallItem(prompt="p", choices=("a", "b"))
    )


def _root(code: str) -> ScriptedModel:
    return ScriptedModel(
        [
            f"```python\n{code}\nprint(got)\n```",
            '```python\nanswer["content"] = repr(got)\nanswer["ready"] = True\n```',
        ]
    )


def _run(code: str, sub: ScriptedModel) -> ctxfold.Result:
    with ctxfold.RLM(model=_root(code), sub_model=sub) as rlm:
        result = rlm.run("label the lines", context="x")
    assert result.ready, result.stop_reason
    return result


def test_llm_batch_with_choices_returns_one_choice_per_prompt() -> None:
    sub = ScriptedModel(lambda m: "The label: Spam." if "buy" in m[-1]["content"] else "ham")
    result = _run('got = llm_batch(["buy now", "see you at 5"], choices=["spam", "ham"])', sub)
    assert result.answer == "['spam', 'ham']"
    prompts = sorted(call[-1]["content"] for call in sub.calls)
    assert prompts[0] == "buy now\n\nAnswer with exactly one of: spam, ham."


def test_a_reply_naming_no_choice_is_asked_again_once_and_counted() -> None:
    sub = ScriptedModel(["I am not sure what this is.", "ham"])
    result = _run('got = llm_query("see you at 5", choices=["spam", "ham"])', sub)
    assert result.answer == "'ham'"
    assert len(sub.calls) == 2
    assert sub.calls[1][-1]["content"].startswith("Reply with only one of these")
    assert sub.calls[1][-2] == {"role": "assistant", "content": "I am not sure what this is."}
    assert result.usage.sub_calls == 2  # both model calls are accounted


def test_two_replies_naming_no_choice_give_an_error_in_that_slot_only() -> None:
    sub = ScriptedModel(lambda m: "ham" if "5" in m[0]["content"] else "no idea")
    result = _run('got = llm_batch(["buy now", "see you at 5"], choices=["spam", "ham"])', sub)
    first, second = ast.literal_eval(result.answer)
    assert first == "[error: llm_query: the reply named none of the choices: 'no idea']"
    assert second == "ham"
    ends = [e for e in result.trace.events if e.type == "subcall_end"]
    assert sorted(e.error is not None for e in ends) == [False, True]


def test_bad_choices_are_a_type_error_in_the_sandbox_or_an_error_text() -> None:
    sub = ScriptedModel(["unused"])
    result = _run(
        "try:\n    llm_query('x', choices='a,b')\nexcept TypeError as exc:\n    got = str(exc)",
        sub,
    )
    assert "choices must be a list of str" in result.answer
    result = _run("got = llm_query('x', choices=['spam', 'Spam'])", sub)
    assert "[error: llm_query: choices must differ" in result.answer
    assert sub.calls == []


def test_the_local_server_gets_a_grammar_and_other_servers_do_not() -> None:
    with FakeOpenAIServer(lambda m: "spam") as server:
        for grammar in (True, False):
            model = OpenAIModel("m", base_url=server.base_url, grammar_choices=grammar)
            text = model.complete([{"role": "user", "content": "hi"}], choices=["spam", "ham"])
            assert text.text == "spam"
            model.close()
    with_grammar, without = server.requests
    assert with_grammar["grammar"] == 'root ::= "spam" | "ham"'
    assert "grammar" not in without and "choices" not in without


def test_choices_bound_the_output_of_each_sub_call() -> None:
    with FakeOpenAIServer(lambda m: "ham") as server:
        root = _root('got = llm_query("see you", choices=["spam", "ham"])')
        with ctxfold.RLM(model=root, sub_model=f"openai:sub@{server.base_url}") as rlm:
            result = rlm.run("label", context="x")
    assert result.answer == "'ham'"
    (request,) = server.requests
    assert request["max_tokens"] == 16 + len("spam") // 2


def test_described_choices_show_each_description_before_the_text() -> None:
    sub = ScriptedModel(lambda m: "spam" if "buy" in m[-1]["content"] else "ham")
    code = (
        'got = llm_batch(["buy now", {"prompt": "see you at 5"}],\n'
        '                choices={"spam": "ads and scams", "ham": ""})'
    )
    result = _run(code, sub)
    assert result.answer == "['spam', 'ham']"
    prompts = sorted(call[-1]["content"] for call in sub.calls)
    assert prompts[0] == (
        "Choices:\n- spam: ads and scams\n- ham\n\n"
        "buy now\n\nAnswer with exactly one of: spam, ham."
    )
    assert prompts[1].startswith("Choices:\n- spam: ads and scams\n- ham\n\nsee you at 5")


def test_bad_descriptions_are_a_type_error_in_the_sandbox_or_an_error_text() -> None:
    sub = ScriptedModel(["unused"])
    result = _run(
        "try:\n    llm_query('x', choices={'spam': 1, 'ham': ''})\n"
        "except TypeError as exc:\n    got = str(exc)",
        sub,
    )
    assert "must map str to str" in result.answer
    result = _run("got = llm_query('x', choices={'spam': 'a\\nb', 'ham': ''})", sub)
    assert "[error: llm_query: each choice's description must be" in result.answer
    assert sub.calls == []


def test_check_notes_needs_one_short_line_per_choice() -> None:
    assert check_notes(["ads", ""], 2) == ("ads", "")
    assert "one description" in str(check_notes(["ads"], 2))
    assert "at most 300" in str(check_notes(["x" * 301, ""], 2))


def test_request_key_depends_on_the_descriptions() -> None:
    bare = SubcallItem(prompt="p", choices=("a", "b"))
    described = SubcallItem(prompt="p", choices=("a", "b"), choice_notes=("x", "y"))
    assert request_key("llm", bare) != request_key("llm", described)


def test_the_instruction_lists_the_choices_in_an_order_drawn_from_the_text() -> None:
    labels = ["a1", "b2", "c3", "d4", "e5", "f6"]
    prompts = {f"line {i}": choice_prompt(f"line {i}", labels) for i in range(120)}
    firsts = Counter(p.split("one of: ")[1].split(",")[0] for p in prompts.values())
    assert set(firsts) == set(labels) and max(firsts.values()) < 40  # no choice is always first
    for text, prompt in prompts.items():
        assert prompt == choice_prompt(text, labels)  # the same text, the same prompt
        listed = prompt.split("one of: ")[1].rstrip(".").split(", ")
        assert sorted(listed) == labels
