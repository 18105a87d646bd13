"""The async tool loop (``arun_tool_loop``) and the clients' ``acomplete_with_tools``, over real
HTTP: OpenAI-compatible (FakeOpenAIServer) and Anthropic (the fake Messages endpoint of
test_tools_native), and the text protocol for models without native tool calls."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ctxfold.models import AnthropicModel, Message, OpenAIModel, RetryPolicy, ScriptedModel
from ctxfold.models._base import ToolCompletion, ToolModel
from ctxfold.testing import FakeOpenAIServer
from ctxfold.tools import Tool, ToolOutcome, arun_tool_loop, run_tool_loop
from test_tools_native import MESSAGES, FakeMessages, broken, lookup


def openai_model(srv: FakeOpenAIServer, **kwargs: Any) -> OpenAIModel:
    return OpenAIModel(
        "fake-model", base_url=srv.base_url, retry=RetryPolicy(base_delay=0), **kwargs
    )


def last(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return messages[-1]


class ALoop:
    """Runs arun_tool_loop like an async caller would, recording tool events and usage."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.outcomes: list[ToolOutcome] = []
        self.accounted: list[int] = []
        self.text_calls = 0

    async def run(self, tools: list[Any], **kwargs: Any) -> Any:
        async def once(convo: list[Message]) -> Any:
            self.text_calls += 1
            completion = await self.model.acomplete(convo)
            self.accounted.append(completion.usage.total)
            return completion

        return await arun_tool_loop(
            once,
            MESSAGES,
            [t if isinstance(t, Tool) else Tool.from_function(t) for t in tools],
            on_tool=self.outcomes.append,
            model=self.model,
            account=lambda usage: self.accounted.append(usage.total),
            **kwargs,
        )


def france_reply(messages: list[dict[str, Any]]) -> str | dict[str, Any]:
    if last(messages)["role"] == "tool":
        return "Answer: " + str(last(messages)["content"])
    return {"tool_calls": [{"id": "call_42", "name": "lookup", "arguments": {"query": "France"}}]}


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    with FakeOpenAIServer(france_reply) as srv:
        yield srv


# -- the protocol --------------------------------------------------------------------------------


def test_both_clients_have_the_async_tool_call() -> None:
    with FakeOpenAIServer("ok") as srv:
        assert isinstance(openai_model(srv), ToolModel)
    assert isinstance(AnthropicModel("claude-test", api_key="sk-ant-test"), ToolModel)

    class SyncOnly:  # a ToolModel of before: the async twin is now part of the protocol
        native_tools = True

        def complete_with_tools(self, messages: Any, tools: Any, **options: Any) -> Any: ...

    assert not isinstance(SyncOnly(), ToolModel)


async def test_acomplete_with_tools_returns_the_calls(server: FakeOpenAIServer) -> None:
    model = openai_model(server)
    spec = {"name": "lookup", "description": "Look a fact up.", "parameters": {"type": "object"}}
    reply = await model.acomplete_with_tools(MESSAGES, [spec], max_tokens=50)
    await model.aclose()
    assert isinstance(reply, ToolCompletion) and reply.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [
        ("call_42", "lookup", {"query": "France"})
    ]
    assert server.request_tools[0] == [{"type": "function", "function": spec}]
    assert server.requests[0]["max_tokens"] == 50


# -- OpenAI-compatible ---------------------------------------------------------------------------


async def test_native_call_runs_tool_and_answers_with_tool_message(
    server: FakeOpenAIServer,
) -> None:
    loop = ALoop(openai_model(server))
    result = await loop.run([lookup])
    await loop.model.aclose()

    assert result.text == "Answer: facts about France (k=3): Paris is the capital"
    assert loop.text_calls == 0 and len(server.requests) == 2
    (spec,) = server.request_tools[0]
    assert spec["function"]["name"] == "lookup"
    assert spec["function"]["parameters"]["required"] == ["query"]
    assert server.request_tools[1] == server.request_tools[0]
    assert "```tool" not in json.dumps(server.requests[0]["messages"])
    assistant, tool_msg = server.requests[1]["messages"][-2:]
    assert assistant["tool_calls"] == [
        {
            "id": "call_42",
            "type": "function",
            "function": {"name": "lookup", "arguments": json.dumps({"query": "France"})},
        }
    ]
    assert tool_msg == {
        "role": "tool",
        "tool_call_id": "call_42",
        "content": "facts about France (k=3): Paris is the capital",
    }
    assert [(o.turn, o.tool, o.arguments, o.error) for o in loop.outcomes] == [
        (1, "lookup", {"query": "France"}, None)
    ]
    assert len(loop.accounted) == 2 and result.usage.total == sum(loop.accounted)
    assert result.finish_reason == "stop"


def test_async_and_sync_loops_send_the_same_requests() -> None:
    """One loop, two drivers: the same scenario makes the same HTTP requests and result."""
    runs = []
    for driver in ("sync", "async"):
        with FakeOpenAIServer(france_reply) as srv:
            model = openai_model(srv)
            tools = [Tool.from_function(lookup), Tool.from_function(broken)]
            if driver == "sync":
                result = run_tool_loop(model.complete, MESSAGES, tools, model=model)
            else:
                result = asyncio.run(arun_tool_loop(model.acomplete, MESSAGES, tools, model=model))
            model.close()
            runs.append((result, srv.requests))
    (sync_result, sync_requests), (async_result, async_requests) = runs
    assert async_requests == sync_requests and len(sync_requests) == 2
    assert async_result == sync_result


async def test_tool_errors_go_back_as_tool_messages() -> None:
    calls = [
        {"id": "a", "name": "broken", "arguments": {"query": "x"}},
        {"id": "b", "name": "nope", "arguments": {}},
        {"id": "c", "name": "lookup", "arguments": "{not json"},
    ]

    def reply(messages: list[dict[str, Any]]) -> str | dict[str, Any]:
        return "gave up" if last(messages)["role"] == "tool" else {"tool_calls": calls}

    with FakeOpenAIServer(reply) as srv:
        loop = ALoop(openai_model(srv))
        result = await loop.run([lookup, broken])
        await loop.model.aclose()

    assert result.text == "gave up"
    tool_msgs = [m for m in srv.requests[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == ["a", "b", "c"]
    assert tool_msgs[0]["content"] == "Tool error (broken): ValueError: no index for x"
    assert tool_msgs[1]["content"].startswith("Tool error (nope): unknown tool 'nope'")
    assert "not valid JSON" in tool_msgs[2]["content"]
    assert [o.turn for o in loop.outcomes] == [1, 2, 3]
    assert all(o.error is not None for o in loop.outcomes)


async def test_tool_timeout_is_reported_and_the_event_loop_goes_on() -> None:
    def slow(query: str) -> str:
        time.sleep(2)  # blocks its thread, never the event loop
        return "late"

    def reply(messages: list[dict[str, Any]]) -> str | dict[str, Any]:
        if last(messages)["role"] == "tool":
            return str(last(messages)["content"])
        return {"tool_calls": [{"name": "slow", "arguments": {"query": "q"}}]}

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    with FakeOpenAIServer(reply) as srv:
        loop = ALoop(openai_model(srv))
        beat = asyncio.create_task(ticker())
        started = time.monotonic()
        result = await loop.run([Tool.from_function(slow, timeout=0.3)])
        elapsed = time.monotonic() - started
        beat.cancel()
        await loop.model.aclose()
    assert result.text == "Tool error (slow): timed out after 0.3 s"
    assert elapsed < 1.5  # the timeout ended the wait, not the tool
    assert ticks >= 10  # the loop ran other tasks while the tool was running


async def test_max_turns_bounds_native_calls() -> None:
    def reply(messages: list[dict[str, Any]]) -> str | dict[str, Any]:
        n = sum(m["role"] == "tool" for m in messages)
        return {
            "content": "still looking",
            "tool_calls": [
                {"name": "lookup", "arguments": {"query": f"q{n}"}},
                {"name": "lookup", "arguments": {"query": f"r{n}"}},
            ],
        }

    with FakeOpenAIServer(reply) as srv:
        loop = ALoop(openai_model(srv))
        result = await loop.run([lookup], max_turns=3)
        await loop.model.aclose()

    assert [o.turn for o in loop.outcomes] == [1, 2, 3]
    assert result.text == "still looking"
    assert len(srv.requests) == 3 and len(loop.accounted) == 3
    tool_msgs = [m for m in srv.requests[2]["messages"] if m["role"] == "tool"]
    assert len(tool_msgs) == 4
    assert "not run: the limit of 3 tool calls" in tool_msgs[3]["content"]
    assert tool_msgs[3]["content"].endswith("reply now with your answer.")


async def test_should_stop_ends_the_loop() -> None:
    reply = {"tool_calls": [{"name": "lookup", "arguments": {"query": "q"}}]}
    with FakeOpenAIServer(lambda messages: reply) as srv:
        loop = ALoop(openai_model(srv))
        result = await loop.run([lookup], should_stop=lambda: "the run's tokens budget is spent")
        await loop.model.aclose()
    assert result.text == "[error: tools: the run's tokens budget is spent before a final answer]"
    assert loop.outcomes == [] and len(srv.requests) == 1


async def test_native_tools_false_uses_the_text_protocol() -> None:
    def reply(messages: list[dict[str, Any]]) -> str:
        if last(messages)["content"].startswith("Tool result"):
            return "Answer: " + str(last(messages)["content"]).splitlines()[1]
        call = {"name": "lookup", "arguments": {"query": "France"}}
        return f"```tool\n{json.dumps(call)}\n```"

    with FakeOpenAIServer(reply) as srv:
        loop = ALoop(openai_model(srv, native_tools=False))
        result = await loop.run([lookup])
        await loop.model.aclose()

    assert result.text == "Answer: facts about France (k=3): Paris is the capital"
    assert srv.request_tools == [None, None]
    assert "```tool" in srv.requests[0]["messages"][0]["content"]
    assert loop.text_calls == 2 and [o.tool for o in loop.outcomes] == ["lookup"]


async def test_scripted_model_runs_the_text_protocol() -> None:
    call = '```tool\n{"name": "lookup", "arguments": {"query": "Oslo"}}\n```'
    loop = ALoop(ScriptedModel([call, "Oslo it is."]))
    result = await loop.run([lookup])
    assert result.text == "Oslo it is." and loop.text_calls == 2
    assert loop.outcomes[0].result.startswith("facts about Oslo")


async def test_loops_run_concurrently_on_one_event_loop() -> None:
    with FakeOpenAIServer(france_reply, latency=0.3) as srv:
        model = openai_model(srv)
        tools = [Tool.from_function(lookup)]
        started = time.monotonic()
        results = await asyncio.gather(
            *(arun_tool_loop(model.acomplete, MESSAGES, tools, model=model) for _ in range(8))
        )
        elapsed = time.monotonic() - started
        await model.aclose()
    assert all(r.text.startswith("Answer: facts about France") for r in results)
    assert len(srv.requests) == 16 and srv.max_in_flight >= 4
    assert elapsed < 8 * 2 * 0.3  # well under the serial time (8 loops of two 0.3 s turns)


# -- Anthropic -----------------------------------------------------------------------------------


@pytest.fixture
def fake_messages() -> Iterator[FakeMessages]:
    server = FakeMessages()
    yield server
    server.close()


async def test_anthropic_native_tool_use_and_tool_result(fake_messages: FakeMessages) -> None:
    model = AnthropicModel(
        "claude-test",
        base_url=fake_messages.base_url,
        api_key="sk-ant-test",
        retry=RetryPolicy(base_delay=0),
    )
    loop = ALoop(model)
    result = await loop.run([lookup, broken])
    await model.aclose()

    assert result.text == (
        "Answer: facts about France (k=3): Paris is the capital | "
        "Tool error (broken): ValueError: no index for y"
    )
    first, second = fake_messages.requests
    assert [t["name"] for t in first["tools"]] == ["lookup", "broken"]
    assert first["tools"][0]["input_schema"]["required"] == ["query"]
    assert "Be brief." in first["system"] and "```tool" not in first["system"]
    assistant, results = second["messages"][-2:]
    assert [b["type"] for b in assistant["content"]] == ["text", "tool_use", "tool_use"]
    assert results["role"] == "user"
    assert [
        (b["type"], b["tool_use_id"], b.get("is_error", False)) for b in results["content"]
    ] == [("tool_result", "toolu_1", False), ("tool_result", "toolu_2", True)]
    assert [o.tool for o in loop.outcomes] == ["lookup", "broken"]
    assert result.usage.input_tokens == 20 and result.usage.output_tokens == 10
    assert loop.accounted == [15, 15] and loop.text_calls == 0
