"""Native tool calls of sub-LLMs over real HTTP: OpenAI-compatible (FakeOpenAIServer) and
Anthropic (a tiny fake Messages endpoint), and the text-protocol fallback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import ctxfold
from ctxfold.models import AnthropicModel, Message, OpenAIModel, RetryPolicy, ScriptedModel
from ctxfold.models._base import ToolModel
from ctxfold.testing import FakeOpenAIServer
from ctxfold.tools import Tool, ToolOutcome, run_tool_loop
from ctxfold.tools._native import native_tool_model
from ctxfold.trace import Cell, ToolCall

MESSAGES: list[Message] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def lookup(query: str, k: int = 3) -> str:
    """Look a fact up.

    Args:
        query: what to look for.
        k: how many facts.
    """
    return f"facts about {query} (k={k}): Paris is the capital"


def broken(query: str) -> str:
    """Always fails."""
    raise ValueError(f"no index for {query}")


def openai_model(srv: FakeOpenAIServer, **kwargs: Any) -> OpenAIModel:
    return OpenAIModel(
        "fake-model", base_url=srv.base_url, retry=RetryPolicy(base_delay=0), **kwargs
    )


class Loop:
    """Runs run_tool_loop like the broker does, recording tool events and accounted usage."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.outcomes: list[ToolOutcome] = []
        self.accounted: list[int] = []
        self.text_calls = 0

    def run(self, tools: list[Any], **kwargs: Any) -> Any:
        def once(convo: list[Message]) -> Any:
            self.text_calls += 1
            completion = self.model.complete(convo)
            self.accounted.append(completion.usage.total)
            return completion

        return run_tool_loop(
            once,
            MESSAGES,
            [t if isinstance(t, Tool) else Tool.from_function(t) for t in tools],
            on_tool=self.outcomes.append,
            model=self.model,
            account=lambda usage: self.accounted.append(usage.total),
            **kwargs,
        )


def last(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return messages[-1]


# -- capability detection ------------------------------------------------------------------------


def test_which_models_call_tools_natively() -> None:
    with FakeOpenAIServer("ok") as srv:
        assert isinstance(openai_model(srv), ToolModel)
        assert native_tool_model(openai_model(srv)) is not None
        assert native_tool_model(openai_model(srv, native_tools=False)) is None
    anthropic = AnthropicModel("claude-test", api_key="sk-ant-test")
    assert native_tool_model(anthropic) is anthropic
    assert native_tool_model(AnthropicModel("c", api_key="k", native_tools=False)) is None
    assert native_tool_model(ScriptedModel(["x"])) is None
    assert native_tool_model(None) is None


# -- OpenAI-compatible ---------------------------------------------------------------------------


def test_native_call_runs_tool_and_answers_with_tool_message() -> None:
    def reply(messages: list[dict[str, Any]]) -> str | dict[str, Any]:
        if last(messages)["role"] == "tool":
            return "Answer: " + str(last(messages)["content"])
        return {
            "tool_calls": [{"id": "call_42", "name": "lookup", "arguments": {"query": "France"}}]
        }

    with FakeOpenAIServer(reply) as srv:
        loop = Loop(openai_model(srv))
        result = loop.run([lookup])

    assert result.text == "Answer: facts about France (k=3): Paris is the capital"
    assert loop.text_calls == 0 and len(srv.requests) == 2
    # the schema went in the request's tools field, every turn
    (spec,) = srv.request_tools[0]
    assert spec["type"] == "function"
    assert spec["function"]["name"] == "lookup"
    assert spec["function"]["description"] == "Look a fact up."
    assert spec["function"]["parameters"]["required"] == ["query"]
    assert srv.request_tools[1] == srv.request_tools[0]
    # no text protocol in the prompt
    assert "```tool" not in json.dumps(srv.requests[0]["messages"])
    # the call and its result went back in the native shapes
    sent = srv.requests[1]["messages"]
    assistant, tool_msg = sent[-2], sent[-1]
    assert assistant["role"] == "assistant"
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
    # trace events and accounting
    assert [(o.turn, o.tool, o.arguments, o.error) for o in loop.outcomes] == [
        (1, "lookup", {"query": "France"}, None)
    ]
    assert len(loop.accounted) == 2
    assert result.usage.total == sum(loop.accounted)
    assert result.finish_reason == "stop"


def test_tool_error_goes_back_as_tool_message_content() -> None:
    calls = [
        {"id": "a", "name": "broken", "arguments": {"query": "x"}},
        {"id": "b", "name": "nope", "arguments": {}},
        {"id": "c", "name": "lookup", "arguments": "{not json"},
    ]

    def reply(messages: list[dict[str, Any]]) -> str | dict[str, Any]:
        if last(messages)["role"] == "tool":
            return "gave up"
        return {"tool_calls": calls}

    with FakeOpenAIServer(reply) as srv:
        loop = Loop(openai_model(srv))
        result = loop.run([lookup, broken])

    assert result.text == "gave up"
    tool_msgs = [m for m in srv.requests[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == ["a", "b", "c"]
    assert tool_msgs[0]["content"] == "Tool error (broken): ValueError: no index for x"
    assert tool_msgs[1]["content"].startswith("Tool error (nope): unknown tool 'nope'")
    assert "not valid JSON" in tool_msgs[2]["content"]
    errors = [(o.turn, o.tool, o.error is not None) for o in loop.outcomes]
    assert errors == [(1, "broken", True), (2, "nope", True), (3, "lookup", True)]


def test_tool_timeout_is_reported_not_raised() -> None:
    def slow(query: str) -> str:
        time.sleep(0.5)
        return "late"

    def reply(messages: list[dict[str, Any]]) -> str | dict[str, Any]:
        if last(messages)["role"] == "tool":
            return str(last(messages)["content"])
        return {"tool_calls": [{"name": "slow", "arguments": {"query": "q"}}]}

    with FakeOpenAIServer(reply) as srv:
        result = Loop(openai_model(srv)).run([Tool.from_function(slow, timeout=0.05)])
    assert result.text == "Tool error (slow): timed out after 0.05 s"


def test_max_turns_bounds_native_calls() -> None:
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
        loop = Loop(openai_model(srv))
        result = loop.run([lookup], max_turns=3)

    assert [o.turn for o in loop.outcomes] == [1, 2, 3]  # the 4th call was not run
    assert result.text == "still looking"
    assert len(srv.requests) == 3 and len(loop.accounted) == 3
    tool_msgs = [m for m in srv.requests[2]["messages"] if m["role"] == "tool"]
    assert len(tool_msgs) == 4  # every call id got an answer
    assert "not run: the limit of 3 tool calls" in tool_msgs[3]["content"]
    assert tool_msgs[3]["content"].endswith("reply now with your answer.")


def test_should_stop_ends_native_loop() -> None:
    reply = {"tool_calls": [{"name": "lookup", "arguments": {"query": "q"}}]}
    with FakeOpenAIServer(lambda messages: reply) as srv:
        loop = Loop(openai_model(srv))
        result = loop.run([lookup], should_stop=lambda: "the run's tokens budget is spent")
    assert result.text == ("[error: tools: the run's tokens budget is spent before a final answer]")
    assert loop.outcomes == [] and len(srv.requests) == 1


def test_native_tools_false_uses_text_protocol() -> None:
    def reply(messages: list[dict[str, Any]]) -> str:
        if last(messages)["content"].startswith("Tool result"):
            return "Answer: " + str(last(messages)["content"]).splitlines()[1]
        call = {"name": "lookup", "arguments": {"query": "France"}}
        return f"```tool\n{json.dumps(call)}\n```"

    with FakeOpenAIServer(reply) as srv:
        loop = Loop(openai_model(srv, native_tools=False))
        result = loop.run([lookup])

    assert result.text == "Answer: facts about France (k=3): Paris is the capital"
    assert srv.request_tools == [None, None]
    assert "```tool" in srv.requests[0]["messages"][0]["content"]
    assert loop.text_calls == 2 and [o.tool for o in loop.outcomes] == ["lookup"]


def test_fake_server_streams_content_of_a_tool_reply() -> None:
    answer = {"content": "hi there", "tool_calls": [{"name": "x", "arguments": {}}]}
    with FakeOpenAIServer(lambda messages: answer) as srv:
        text = openai_model(srv).complete([{"role": "user", "content": "q"}]).text
    assert text == "hi there"


# -- Anthropic -----------------------------------------------------------------------------------


class FakeMessages:
    """POST /v1/messages: a tool_use block first, then text echoing the tool_result."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(body)
                payload = json.dumps(owner.answer(body)).encode()
                head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                head += f"Content-Length: {len(payload)}\r\n\r\n"
                self.wfile.write(head.encode() + payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        usage = {"input_tokens": 10, "output_tokens": 5}
        turn = body["messages"][-1]
        results = [
            b for b in turn["content"] if isinstance(b, dict) and b.get("type") == "tool_result"
        ]
        if results:
            text = " | ".join(r["content"] for r in results)
            content: list[dict[str, Any]] = [{"type": "text", "text": f"Answer: {text}"}]
            return {"content": content, "stop_reason": "end_turn", "usage": usage}
        content = [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"query": "France"}},
            {"type": "tool_use", "id": "toolu_2", "name": "broken", "input": {"query": "y"}},
        ]
        return {"content": content, "stop_reason": "tool_use", "usage": usage}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_messages() -> Iterator[FakeMessages]:
    server = FakeMessages()
    yield server
    server.close()


def test_anthropic_native_tool_use_and_tool_result(fake_messages: FakeMessages) -> None:
    model = AnthropicModel(
        "claude-test",
        base_url=fake_messages.base_url,
        api_key="sk-ant-test",
        retry=RetryPolicy(base_delay=0),
    )
    loop = Loop(model)
    result = loop.run([lookup, broken])

    assert result.text == (
        "Answer: facts about France (k=3): Paris is the capital | "
        "Tool error (broken): ValueError: no index for y"
    )
    first, second = fake_messages.requests
    assert [t["name"] for t in first["tools"]] == ["lookup", "broken"]
    assert first["tools"][0]["input_schema"]["required"] == ["query"]
    assert first["tools"][0]["description"] == "Look a fact up."
    assert "Be brief." in first["system"] and "```tool" not in first["system"]
    assert first["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}
    ]
    assistant, results = second["messages"][-2:]
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"query": "France"}},
            {"type": "tool_use", "id": "toolu_2", "name": "broken", "input": {"query": "y"}},
        ],
    }
    assert results["role"] == "user"
    assert [
        (b["type"], b["tool_use_id"], b.get("is_error", False)) for b in results["content"]
    ] == [
        ("tool_result", "toolu_1", False),
        ("tool_result", "toolu_2", True),
    ]
    assert [o.tool for o in loop.outcomes] == ["lookup", "broken"]
    assert result.usage.input_tokens == 20 and result.usage.output_tokens == 10
    assert loop.accounted == [15, 15] and loop.text_calls == 0


def test_whole_run_uses_native_tool_calls_for_sub_llms() -> None:
    """The root delegates; the sub-LLM calls the tool natively; the root sees only the answer."""

    def lookup(city: str) -> str:
        """Look up the population of a city."""
        return f"{city} has 123 inhabitants"

    def reply(messages: list[dict]) -> object:
        last = messages[-1]
        if last.get("role") == "tool":
            return "The population is 123."
        if last["content"].startswith("How many people"):
            return {"tool_calls": [{"name": "lookup", "arguments": {"city": "Oslo"}}]}
        if "Output:" in last["content"]:
            return '```python\nanswer["content"] = r\nanswer["ready"] = True\n```'
        return '```python\nr = llm_query("How many people live in Oslo?")\nprint(r)\n```'

    with FakeOpenAIServer(reply) as server:
        rlm = ctxfold.RLM(model=f"openai:m@{server.base_url}", tools=[lookup])
        result = rlm.run("Population of Oslo?", context="no data here")
        rlm.close()
        tool_requests = [t for t in server.request_tools if t]
    assert result.ready and result.answer == "The population is 123."
    assert tool_requests and tool_requests[0][0]["function"]["name"] == "lookup"
    calls = result.trace.of_type(ToolCall)
    assert len(calls) == 1 and calls[0].arguments == {"city": "Oslo"}
    root_text = " ".join(c.code + c.stdout for c in result.trace.of_type(Cell))
    assert "123 inhabitants" not in root_text  # tool output never reaches the root
