"""AnthropicModel over real HTTP against a tiny fake Messages endpoint on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ctxfold.errors import MissingAPIKeyError, ModelError
from ctxfold.models import AnthropicModel, Message, Model, RetryPolicy


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


class FakeAnthropic:
    """POST /v1/messages. ``faults`` are HTTP statuses (or "malformed") served first, in order."""

    def __init__(self, faults: list[str] | None = None, retry_after: str | None = None) -> None:
        self.faults = list(faults or [])
        self.retry_after = retry_after
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(body)
                owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                fault = owner.faults.pop(0) if owner.faults else None
                if fault == "malformed":
                    self._send(200, b'{"content": [', {})
                elif fault is not None:
                    extra = {"Retry-After": owner.retry_after} if owner.retry_after else {}
                    error = {"type": "error", "error": {"type": "x", "message": f"fault {fault}"}}
                    self._send(int(fault), json.dumps(error).encode(), extra)
                else:
                    self._send(200, json.dumps(owner.answer(body)).encode(), {})

            def _send(self, status: int, payload: bytes, extra: dict[str, str]) -> None:
                head = [f"HTTP/1.1 {status} X", "Content-Type: application/json"]
                head += [
                    f"Content-Length: {len(payload)}",
                    *(f"{k}: {v}" for k, v in extra.items()),
                ]
                self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        last = body["messages"][-1]["content"]
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": "echo: "}, {"type": "text", "text": last}],
            "stop_reason": "max_tokens" if body["max_tokens"] < 10 else "end_turn",
            "usage": {
                "input_tokens": 10,
                "output_tokens": 4,
                "cache_read_input_tokens": 5,
                "cache_creation_input_tokens": 1,
            },
        }

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic()
    yield server
    server.close()


MESSAGES: list[Message] = [
    {"role": "system", "content": "rule one"},
    {"role": "system", "content": "rule two"},
    {"role": "user", "content": "hi"},
]


def make_model(
    server: FakeAnthropic, sleeps: list[float] | None = None, **kw: Any
) -> AnthropicModel:
    retry = RetryPolicy(base_delay=0, sleep=(sleeps if sleeps is not None else []).append)
    return AnthropicModel(
        "claude-test", base_url=server.base_url, api_key="sk-ant-test", retry=retry, **kw
    )


def test_completion_request_and_usage(fake: FakeAnthropic) -> None:
    model = make_model(fake, price_per_mtok=(1_000_000.0, 1_000_000.0))
    assert isinstance(model, Model)
    result = model.complete(MESSAGES, temperature=0.2, stop="END", seed=3)
    assert result.text == "echo: hi"
    assert result.finish_reason == "stop"
    assert result.model == "claude-test"
    usage = result.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens) == (16, 4, 5)
    assert usage.estimated is False
    assert usage.cost_usd == pytest.approx(20.0)
    body = fake.requests[0]
    assert body["system"] == "rule one\n\nrule two"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_tokens"] == 4096
    assert body["temperature"] == 0.2
    assert body["stop_sequences"] == ["END"]
    assert "seed" not in body
    sent = fake.headers[0]
    assert "sk-ant-test" in sent.get("x-api-key", "") + sent.get("authorization", "")
    assert "anthropic-version" in fake.headers[0]
    model.close()


def test_max_tokens_and_length_finish(fake: FakeAnthropic) -> None:
    model = make_model(fake, default_options={"max_tokens": 100, "top_k": 5})
    assert model.complete(MESSAGES[2:]).finish_reason == "stop"
    assert fake.requests[-1]["max_tokens"] == 100
    assert fake.requests[-1]["top_k"] == 5
    assert "system" not in fake.requests[-1]
    assert model.complete(MESSAGES, max_tokens=5).finish_reason == "length"


def test_429_with_retry_after_then_success() -> None:
    server = FakeAnthropic(faults=["429", "529"], retry_after="4")
    try:
        sleeps: list[float] = []
        assert make_model(server, sleeps).complete(MESSAGES).text == "echo: hi"
        assert len(server.requests) == 3
        assert sleeps == [4.0, 4.0]  # Retry-After is honoured on 429 and 5xx alike
    finally:
        server.close()


def test_400_not_retried_and_bounded_retries() -> None:
    server = FakeAnthropic(faults=["400", "500", "500", "500", "500"])
    try:
        with pytest.raises(ModelError, match=r"HTTP 400 Bad Request: fault 400 \(not retried\)"):
            make_model(server).complete(MESSAGES)
        assert len(server.requests) == 1
        with pytest.raises(ModelError, match="failed after 4 attempts: HTTP 500"):
            make_model(server).complete(MESSAGES)
        assert len(server.requests) == 5
    finally:
        server.close()


def test_malformed_body_is_retried() -> None:
    server = FakeAnthropic(faults=["malformed"])
    try:
        assert make_model(server).complete(MESSAGES).text == "echo: hi"
        assert len(server.requests) == 2
    finally:
        server.close()


async def test_async(fake: FakeAnthropic) -> None:
    model = make_model(fake)
    result = await model.acomplete(MESSAGES)
    assert result.text == "echo: hi"
    assert result.usage.output_tokens == 4
    await model.aclose()


def test_missing_key() -> None:
    with pytest.raises(MissingAPIKeyError, match="ANTHROPIC_API_KEY is not set"):
        AnthropicModel("claude-sonnet-4-5")


def test_key_and_base_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    model = AnthropicModel("claude-sonnet-4-5")
    assert model.base_url == "http://127.0.0.1:9"
    assert "sk-ant-env" not in repr(model)


def test_the_fixed_prefix_gets_prompt_cache_breakpoints(fake: FakeAnthropic) -> None:
    model = make_model(fake)
    messages = [
        {"role": "system", "content": "the rules"},
        {"role": "user", "content": "a demonstration"},
        {"role": "assistant", "content": "its reply"},
        {"role": "user", "content": "the task"},
    ]
    result = model.complete(messages, cache_prefix=3)  # system, demonstration, its reply
    body = fake.requests[0]
    marked = {"type": "ephemeral"}
    assert body["system"] == [{"type": "text", "text": "the rules", "cache_control": marked}]
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "its reply", "cache_control": marked}
    ]
    assert body["messages"][0]["content"] == "a demonstration"
    assert body["messages"][2]["content"] == "the task"
    assert result.usage.cached_tokens == 5  # what the server reports as read from its cache
    model.complete(messages)
    assert fake.requests[1]["system"] == "the rules"  # no prefix named: nothing marked
    model.close()


def test_root_calls_mark_the_run_s_first_messages(fake: FakeAnthropic) -> None:
    import ctxfold

    with ctxfold.RLM(make_model(fake), budget=ctxfold.Budget(iterations=1)) as rlm:
        rlm.run("How long is it?", "12345")
    first = fake.requests[0]
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    # the run's first messages are its fixed prefix: the last of them carries the breakpoint
    marked = [m for m in first["messages"] if isinstance(m["content"], list)]
    assert marked == [first["messages"][-1]]
    assert "How long is it?" in marked[0]["content"][0]["text"]
