"""OpenAIModel over real HTTP against the package's FakeOpenAIServer (never the internet)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ctxfold.errors import MissingAPIKeyError, ModelError
from ctxfold.models import Completion, Message, Model, OpenAIModel, RetryPolicy
from ctxfold.testing import FakeOpenAIServer, Fault

HELLO: list[Message] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "say hello to the world"},
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


class Sleeps:
    """Records the waits a RetryPolicy asks for instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.calls.append(seconds)

    def policy(self, max_attempts: int = 4) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=max_attempts, base_delay=0, sleep=self, async_sleep=self.asleep
        )


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer("hello world") as srv:
        yield srv


def make_model(srv: FakeOpenAIServer, sleeps: Sleeps | None = None, **kwargs: Any) -> OpenAIModel:
    retry = sleeps.policy() if sleeps else RetryPolicy(base_delay=0)
    return OpenAIModel("fake-model", base_url=srv.base_url, retry=retry, **kwargs)


# -- plain calls -------------------------------------------------------------------------------


def test_completion_text_and_usage(server: FakeOpenAIServer) -> None:
    model = make_model(server)
    assert isinstance(model, Model)
    result = model.complete(HELLO)
    assert isinstance(result, Completion)
    assert result.text == "hello world"
    assert result.model == "fake-model"
    assert result.finish_reason == "stop"
    assert result.usage.input_tokens == 7  # the server counts words
    assert result.usage.output_tokens == 2
    assert result.usage.estimated is False
    assert result.usage.cost_usd is None
    assert server.requests[0]["messages"] == HELLO
    assert server.requests[0]["model"] == "fake-model"
    model.close()


def test_usage_estimated_when_server_omits_it() -> None:
    with FakeOpenAIServer("hello world", include_usage=False) as srv:
        result = make_model(srv).complete(HELLO)
    assert result.usage.estimated is True
    assert result.usage.input_tokens > 0
    assert result.usage.output_tokens > 0


def test_cost_from_usage_field_or_price() -> None:
    with FakeOpenAIServer("hello world", usage_cost=0.25) as srv:
        assert make_model(srv).complete(HELLO).usage.cost_usd == 0.25
        priced = make_model(srv, price_per_mtok=(1_000_000.0, 2_000_000.0))
        assert priced.complete(HELLO).usage.cost_usd == pytest.approx(7 * 1 + 2 * 2)


def test_reply_function_sees_messages() -> None:
    with FakeOpenAIServer(lambda messages: messages[-1]["content"].upper()) as srv:
        assert make_model(srv).complete(HELLO).text == "SAY HELLO TO THE WORLD"


def test_options_and_defaults_are_sent(server: FakeOpenAIServer) -> None:
    model = make_model(server, default_options={"temperature": 0.5, "top_p": 0.9, "seed": 1})
    model.complete(HELLO, max_tokens=12, stop=["\n"], seed=7, unknown_option="dropped")
    body = server.requests[-1]
    assert body["max_tokens"] == 12
    assert body["stop"] == ["\n"]
    assert body["seed"] == 7  # per-call wins over default_options
    assert body["temperature"] == 0.5
    assert body["top_p"] == 0.9
    assert "unknown_option" not in body
    assert "timeout" not in body


def test_openai_api_gets_max_completion_tokens() -> None:
    model = OpenAIModel("gpt-test", api_key="sk-test")  # never called: no network in tests
    body, options = model._request(HELLO, {"max_tokens": 5, "timeout": 3})
    assert body["max_completion_tokens"] == 5
    assert "max_tokens" not in body
    assert options == {"timeout": 3}


# -- retries -----------------------------------------------------------------------------------


def test_429_retry_after_is_honoured(sleeps: Sleeps) -> None:
    with FakeOpenAIServer("ok", faults=[Fault("429", retry_after=3)]) as srv:
        assert make_model(srv, sleeps).complete(HELLO).text == "ok"
        assert len(srv.requests) == 2
    assert sleeps.calls == [3.0]


def test_retry_after_is_capped(sleeps: Sleeps) -> None:
    with FakeOpenAIServer("ok", faults=[Fault("429", retry_after=3600)]) as srv:
        make_model(srv, sleeps).complete(HELLO)
    assert sleeps.calls == [60.0]


def test_500_is_retried_then_succeeds(sleeps: Sleeps) -> None:
    with FakeOpenAIServer("ok", faults=[Fault("500", times=2)]) as srv:
        assert make_model(srv, sleeps).complete(HELLO).text == "ok"
        assert len(srv.requests) == 3
    assert sleeps.calls == [0.0, 0.0]


def test_retries_are_bounded(sleeps: Sleeps) -> None:
    with FakeOpenAIServer("ok", faults=[Fault("503", times=10)]) as srv:
        with pytest.raises(ModelError) as info:
            make_model(srv, sleeps).complete(HELLO)
        assert len(srv.requests) == 4
    message = str(info.value)
    assert "503" in message
    assert "after 4 attempts" in message
    assert "\n" not in message
    assert len(sleeps.calls) == 3


def test_400_is_not_retried(sleeps: Sleeps) -> None:
    with FakeOpenAIServer("ok", faults=[Fault("400")]) as srv:
        with pytest.raises(ModelError, match="HTTP 400 Bad Request") as info:
            make_model(srv, sleeps).complete(HELLO)
        assert len(srv.requests) == 1
    assert "not retried" in str(info.value)
    assert sleeps.calls == []


@pytest.mark.parametrize("kind", ["malformed", "empty", "cutoff"])
def test_unusable_bodies_are_retried(kind: str, sleeps: Sleeps) -> None:
    with FakeOpenAIServer("ok", faults=[Fault(kind)]) as srv:
        assert make_model(srv, sleeps).complete(HELLO).text == "ok"
        assert len(srv.requests) == 2


@pytest.mark.parametrize(("kind", "words"), [("malformed", "not JSON"), ("empty", "no choices")])
def test_unusable_bodies_end_in_model_error(kind: str, words: str, sleeps: Sleeps) -> None:
    with FakeOpenAIServer("ok", faults=[Fault(kind, times=9)]) as srv:
        with pytest.raises(ModelError, match=words):
            make_model(srv, sleeps).complete(HELLO)
        assert len(srv.requests) == 4


def test_timeout_is_retried(sleeps: Sleeps) -> None:
    with FakeOpenAIServer("ok", faults=[Fault("stall", seconds=5)]) as srv:
        model = make_model(srv, sleeps, timeout=0.3)
        assert model.complete(HELLO).text == "ok"
        assert len(srv.requests) == 2


def test_error_message_never_holds_the_key(sleeps: Sleeps) -> None:
    secret = "sk-very-secret-0123456789"
    with FakeOpenAIServer("ok", faults=[Fault("401")]) as srv:
        model = OpenAIModel("m", base_url=srv.base_url, api_key=secret, retry=sleeps.policy())
        with pytest.raises(ModelError, match="401") as info:
            model.complete(HELLO)
    assert secret not in str(info.value)
    assert secret not in repr(model)


# -- async, concurrency, lifecycle -------------------------------------------------------------


async def test_async_completion_and_retry(sleeps: Sleeps) -> None:
    with FakeOpenAIServer("hello async", faults=[Fault("429", retry_after=2)]) as srv:
        model = make_model(srv, sleeps)
        result = await model.acomplete(HELLO, max_tokens=3)
        assert result.text == "hello async"
        assert result.usage.output_tokens == 2
        assert len(srv.requests) == 2
        assert srv.requests[-1]["max_tokens"] == 3
        await model.aclose()
    assert sleeps.calls == [2.0]


async def test_async_bounded_retries_end_in_model_error(sleeps: Sleeps) -> None:
    with FakeOpenAIServer("ok", faults=[Fault("500", times=9)]) as srv:
        with pytest.raises(ModelError, match="HTTP 500"):
            await make_model(srv, sleeps).acomplete(HELLO)
        assert len(srv.requests) == 4


def test_async_works_across_event_loops(server: FakeOpenAIServer) -> None:
    model = make_model(server)
    for _ in range(2):  # each asyncio.run has its own loop, and needs its own connection pool
        assert asyncio.run(model.acomplete(HELLO)).text == "hello world"
    model.close()


def test_many_threads_share_one_client() -> None:
    with FakeOpenAIServer("ok", latency=0.2) as srv:
        model = make_model(srv)
        model.complete(HELLO)  # build the client before the rush
        srv.reset_stats()
        start = threading.Barrier(16)
        results: list[str] = []

        def call() -> None:
            start.wait()
            results.append(model.complete(HELLO).text)

        threads = [threading.Thread(target=call) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == ["ok"] * 16
        assert srv.max_in_flight >= 12
        model.close()


def test_close_then_use_again(server: FakeOpenAIServer) -> None:
    model = make_model(server)
    model.complete(HELLO)
    model.close()
    model.close()
    assert model.complete(HELLO).text == "hello world"
    model.close()


# -- keys and construction ---------------------------------------------------------------------


def test_missing_key_for_the_openai_api() -> None:
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY is not set"):
        OpenAIModel("gpt-5-mini")


def test_key_and_base_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert OpenAIModel("gpt-5-mini").base_url is None
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert OpenAIModel("m").base_url == "http://127.0.0.1:9/v1"  # no key needed


def test_custom_server_needs_no_key(server: FakeOpenAIServer) -> None:
    model = OpenAIModel("m", base_url=server.base_url)
    assert model.complete(HELLO).text == "hello world"


def test_importing_models_does_not_load_the_sdks() -> None:
    code = (
        "import sys, ctxfold.models; "
        "assert 'openai' not in sys.modules and 'anthropic' not in sys.modules, "
        "sorted(m for m in sys.modules if m in ('openai', 'anthropic'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the fake server itself ----------------------------------------------------------------------


def test_fake_server_streams_and_lists_models(server: FakeOpenAIServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    try:
        assert [m.id for m in client.models.list()] == ["fake"]
        stream = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "say hello to the world"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "hello world"
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 2
    finally:
        client.close()


def test_fault_kinds_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("teapot")
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("200")
    with pytest.raises(ValueError, match="at least once"):
        Fault("500", times=0)


def test_a_broken_reply_function_becomes_a_500(sleeps: Sleeps) -> None:
    def reply(messages: list[dict[str, Any]]) -> str:
        raise RuntimeError("oops")

    with FakeOpenAIServer(reply) as srv:
        with pytest.raises(ModelError, match=r"HTTP 500.*reply function failed"):
            make_model(srv, sleeps).complete(HELLO)
        assert len(srv.requests) == 4


def test_openai_host_given_explicitly_still_needs_a_key() -> None:
    with pytest.raises(MissingAPIKeyError):
        OpenAIModel("gpt-5-mini", base_url="https://api.openai.com/v1")
