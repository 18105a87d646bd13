"""Small ``choices`` items of one ``llm_batch`` share a sub-call: numbered in, one choice per
line out, each item traced and counted as its own sub-call, and re-asked alone when missed."""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest

import ctxfold
from ctxfold.cache import ResponseCache
from ctxfold.choices import pack_grammar, pack_prompt, packable, read_pack
from ctxfold.models import Message, OpenAIModel, ScriptedModel
from ctxfold.testing.fake_openai import FakeOpenAIServer

LABELS = ["spam", "ham"]


def _label(text: str) -> str:
    return "spam" if "buy" in text else "ham"


def _packed_reply(messages: list[Message]) -> str:
    """A model that labels every numbered item of a pack, or the one text it is given."""
    prompt = str(messages[-1]["content"])
    items = re.findall(r"^(\d+)\. (.*)$", prompt, re.M)
    if not items:
        return _label(prompt)
    return "".join(f"{n}: {_label(text)}\n" for n, text in items)


def _run(lines: list[str], sub: Any, *, ready: bool = True, **options: Any) -> ctxfold.Result:
    root = ScriptedModel(
        [
            f"```python\ngot = llm_batch({lines!r}, choices={LABELS!r})\nprint(got)\n```",
            '```python\nanswer["content"] = repr(got)\nanswer["ready"] = True\n```',
        ]
    )
    options = {k: v for k, v in ({"choice_pack": 16} | options).items() if v is not None}
    with ctxfold.RLM(model=root, sub_model=sub, **options) as rlm:
        result = rlm.run("label the lines", context="x")
    assert result.ready == ready, result.stop_reason
    return result


def _ends(result: ctxfold.Result) -> list[Any]:
    return [e for e in result.trace.events if e.type == "subcall_end"]


def test_the_pack_prompt_puts_the_shared_head_first_and_numbers_the_items() -> None:
    prompt = pack_prompt(["buy now", "see you"], LABELS, ["ads", "mail you want"])
    head, items, tail = prompt.split("\n\n")[1:]
    assert prompt.startswith("Choices:\n- spam: ads\n- ham: mail you want\n\nGive each of the 2")
    assert items == "1. buy now\n2. see you"
    assert head.endswith(("one of: spam, ham.", "one of: ham, spam."))
    assert tail.startswith('Reply with 2 lines, "1: <answer>" to "2: <answer>"')


def test_the_pack_grammar_allows_only_numbered_choices() -> None:
    assert pack_grammar(2, ['a "b"', "c"]) == (
        'root ::= "1: " choice "\\n" "2: " choice "\\n"\nchoice ::= "a \\"b\\"" | "c"'
    )


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("1: spam\n2: ham\n3: ham", ["spam", "ham", "ham"]),
        ("Here you go:\n2. HAM\n1) spam.\n", ["spam", "ham", None]),  # any order, chatter
        ("1: spam\n1: ham\n2: maybe\n3: ham\n9: spam", [None, None, "ham"]),  # twice, none, 9
        ("spam\nham\nham", [None, None, None]),  # no numbers: nothing can be trusted
    ],
)
def test_read_pack_gives_each_item_its_choice_or_none(
    reply: str, expected: list[str | None]
) -> None:
    assert read_pack(reply, 3, LABELS) == expected


def test_only_short_single_lines_can_share_a_call() -> None:
    assert packable("buy now") and packable("x" * 600)
    assert not packable("") and not packable("x" * 601) and not packable("two\nlines")


def test_llm_batch_packs_small_items_into_one_sub_call() -> None:
    sub = ScriptedModel(_packed_reply)
    lines = ["buy now", "see you at 5", "buy two get one", "lunch?"]
    result = _run(lines, sub)
    assert ast.literal_eval(result.answer) == ["spam", "ham", "spam", "ham"]
    assert len(sub.calls) == 1 and result.usage.sub_calls == 1
    ends = _ends(result)
    assert [e.response for e in ends] == ["spam", "ham", "spam", "ham"]
    assert all(e.error is None for e in ends)
    # the one call's tokens are shared out among the four items' events, nothing lost
    assert sum(e.input_tokens for e in ends) == result.usage.sub_input_tokens
    assert sum(e.output_tokens for e in ends) == result.usage.sub_output_tokens
    starts = [e for e in result.trace.events if e.type == "subcall_start"]
    assert [s.prompt_preview for s in starts] == lines
    assert len({s.key for s in starts}) == 4  # each item keeps its own key (resume, replay)


def test_an_item_the_reply_misses_is_asked_alone() -> None:
    def reply(messages: list[Message]) -> str:
        prompt = str(messages[-1]["content"])
        return "1: spam\n2: I cannot tell\n" if "1. " in prompt else _label(prompt)

    sub = ScriptedModel(reply)
    result = _run(["buy now", "see you at 5"], sub)
    assert ast.literal_eval(result.answer) == ["spam", "ham"]
    assert len(sub.calls) == 2
    assert sub.calls[1][-1]["content"].startswith("see you at 5\n\nAnswer with exactly one of")
    errors = [e.error for e in _ends(result)]
    assert errors[0] is None and errors[2] is None
    assert "no choice for this item in the reply to its pack of 2; asked alone" in errors[1]


def test_items_that_cannot_share_a_call_are_asked_alone() -> None:
    sub = ScriptedModel(_packed_reply)
    result = _run(["buy now", "see you\nat 5", "x" * 700], sub)
    assert ast.literal_eval(result.answer) == ["spam", "ham", "ham"]
    assert len(sub.calls) == 3  # a pack of one is a plain sub-call
    sub = ScriptedModel(_packed_reply)
    _run(["buy now", "see you"], sub, choice_pack=1)
    assert len(sub.calls) == 2
    sub = ScriptedModel(_packed_reply)
    _run(["buy now", "see you"], sub, choice_pack=None)  # packing is asked for, not the default
    assert len(sub.calls) == 2


def test_a_large_batch_is_cut_into_packs_of_about_equal_size() -> None:
    sub = ScriptedModel(_packed_reply)
    lines = [f"buy item {i}" if i % 3 else f"note {i}" for i in range(40)]
    result = _run(lines, sub, choice_pack=16)
    assert ast.literal_eval(result.answer) == [_label(line) for line in lines]
    sizes = sorted(len(re.findall(r"^\d+\. ", str(c[-1]["content"]), re.M)) for c in sub.calls)
    assert sizes == [13, 13, 14]  # 14, 13, 13: not 16, 16, 8


def test_a_sub_call_budget_counts_packed_items_one_by_one() -> None:
    sub = ScriptedModel(_packed_reply)
    budget = ctxfold.Budget(sub_calls=3)
    result = _run(["buy a", "b", "buy c", "d", "e"], sub, budget=budget, ready=False)
    assert result.stop_reason == "sub_calls"
    (cell,) = [e for e in result.trace.events if e.type == "cell"]
    got = ast.literal_eval(cell.stdout)
    assert got[:3] == ["spam", "ham", "spam"]
    assert all(g.startswith("[error: llm_query: budget exhausted") for g in got[3:])
    assert len(sub.calls) == 1


def test_the_local_server_gets_a_grammar_for_the_whole_pack() -> None:
    with FakeOpenAIServer(_packed_reply) as server:
        model = OpenAIModel("sub", base_url=server.base_url, grammar_choices=True)
        result = _run(["buy now", "see you"], model)
        model.close()
    assert ast.literal_eval(result.answer) == ["spam", "ham"]
    (request,) = server.requests
    assert request["grammar"] == pack_grammar(2, LABELS)
    assert request["max_tokens"] >= 2 * len("1: spam\n")


def test_packs_are_cached_apart_from_single_calls(tmp_path: Any) -> None:
    cache = ResponseCache(tmp_path / "replies.sqlite")
    messages: list[Message] = [{"role": "user", "content": "p"}]
    one = cache.key("m", messages, {"choices": LABELS})
    assert one != cache.key("m", messages, {"choices": LABELS, "choice_items": 2})


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "16"])
def test_a_bad_choice_pack_is_a_one_line_error(bad: object) -> None:
    with pytest.raises(ctxfold.CtxfoldError, match="choice_pack must be a whole number >= 1"):
        ctxfold.RLM(model=ScriptedModel(["unused"]), choice_pack=bad)  # type: ignore[arg-type]


def test_a_failed_pack_is_traced_and_answered_as_a_failed_single_call_is() -> None:
    def broken(messages: list[Message]) -> str:
        raise RuntimeError("the server went away")

    lines = ["buy now", "see you", "buy more"]
    packed = _run(lines, ScriptedModel(broken))
    alone = _run(lines, ScriptedModel(broken), choice_pack=1)
    for result in (packed, alone):
        got = ast.literal_eval(result.answer)
        assert got == ["[error: llm_query: the server went away]"] * 3
        assert [e.error for e in _ends(result)] == ["the server went away"] * 3
