"""ScriptedModel: the shipped test double."""

from __future__ import annotations

import threading

import pytest

from ctxfold.errors import ModelError
from ctxfold.models import Message, Model, ScriptedModel


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def test_replays_in_order_then_runs_out() -> None:
    model = ScriptedModel(["one", "two"], name="script", context_window=1000)
    assert isinstance(model, Model)
    assert (model.name, model.context_window) == ("script", 1000)
    assert model.complete(user("a")).text == "one"
    assert model.remaining == 1
    result = model.complete(user("b"))
    assert (result.text, result.model, result.finish_reason) == ("two", "script", "stop")
    with pytest.raises(ModelError, match=r"^ScriptedModel ran out of replies after 2 calls$"):
        model.complete(user("c"))
    assert model.remaining == 0


def test_usage_is_estimated() -> None:
    usage = ScriptedModel(["a reply of some words"]).complete(user("hello there")).usage
    assert usage.estimated is True
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert usage.cost_usd is None


def test_records_copies_of_the_messages() -> None:
    model = ScriptedModel(["ok"])
    messages = user("original")
    model.complete(messages)
    messages[0]["content"] = "changed"
    messages.append({"role": "assistant", "content": "extra"})
    assert model.calls == [[{"role": "user", "content": "original"}]]


def test_reply_function() -> None:
    def reply(messages: list[Message]) -> str:
        messages.clear()  # mutating what the function gets must not touch the record
        return "echo"

    model = ScriptedModel(reply)
    assert model.complete(user("hi")).text == "echo"
    assert model.complete(user("again")).text == "echo"
    assert model.calls == [user("hi"), user("again")]
    assert model.remaining == 0


def test_exceptions_in_the_script_are_raised() -> None:
    model = ScriptedModel(["first", ModelError("boom"), "third"])
    assert model.complete(user("a")).text == "first"
    with pytest.raises(ModelError, match="boom"):
        model.complete(user("b"))
    assert model.complete(user("c")).text == "third"


def test_a_single_string_is_refused() -> None:
    with pytest.raises(TypeError):
        ScriptedModel("not a list")


def test_thread_safe() -> None:
    replies = [f"reply {i}" for i in range(400)]
    model = ScriptedModel(replies)
    seen: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(25):
            text = model.complete(user("q")).text
            with lock:
                seen.append(text)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == sorted(replies)
    assert len(model.calls) == 400


async def test_async() -> None:
    model = ScriptedModel(["async one"])
    result = await model.acomplete(user("hi"), max_tokens=5)
    assert result.text == "async one"
    model.close()
