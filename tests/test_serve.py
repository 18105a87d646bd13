"""`ctxfold serve` as a real process on a real socket, driven by the official `openai` client,
with the scripted fake OpenAI server as the model."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from ctxfold.testing.fake_openai import FakeOpenAIServer
from ctxfold.trace import Trace

pytest.importorskip("starlette")


def _reply(messages: list[dict[str, Any]]) -> str:
    """Root: echo what the input is, with a batch of two sub-calls on the way; sub: 'ok'."""
    last = messages[-1]["content"]
    if last.startswith("sub "):
        return "ok"
    if "Output:" in last:
        return '```python\nanswer["content"] = f"{kind}:{size}"\nanswer["ready"] = True\n```'
    return (
        "```python\nkind = type(context).__name__\nsize = len(context)\n"
        "print(llm_batch(['sub a', 'sub b']))\n```"
    )


class Served:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        self.stderr.extend(self.process.stderr)

    def client(self, key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=60)


def _serve(model_url: str, *extra: str) -> Served:
    model = f"openai:fake@{model_url}"
    command = [sys.executable, "-m", "ctxfold", "serve", "--model", model, "--port", "0", *extra]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    line = process.stderr.readline()
    found = re.search(r"(http://\S+)", line)
    assert found, line
    return Served(process, found.group(1))


def _stop(served: Served) -> int:
    served.process.send_signal(signal.SIGTERM)
    return served.process.wait(timeout=60)


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(_reply) as server:
        yield server


@pytest.fixture
def served(fake: FakeOpenAIServer, tmp_path: Path) -> Iterator[Served]:
    server = _serve(
        fake.base_url,
        "--alias",
        "other=openai:fake2@" + fake.base_url,
        "--max-tokens",
        "100000",
        "--max-body-mb",
        "0.05",
        "--trace-dir",
        str(tmp_path / "traces"),
    )
    yield server
    _stop(server)


def test_models_and_a_plain_completion_over_the_earlier_messages(served: Served) -> None:
    client = served.client()
    assert [m.id for m in client.models.list()] == ["ctxfold", "other"]
    one = client.chat.completions.create(
        model="ctxfold",
        messages=[
            {"role": "system", "content": "x" * 1234},
            {"role": "user", "content": "What is it?"},
        ],
    )
    # the one earlier message is the context, as a string
    assert one.choices[0].message.content == "str:1234"
    assert one.choices[0].finish_reason == "stop"
    figures = one.model_extra["ctxfold"]
    assert figures["ready"] and figures["sub_calls"] == 2 and figures["iterations"] == 2
    assert one.usage is not None
    assert one.usage.total_tokens == one.usage.prompt_tokens + one.usage.completion_tokens > 0
    many = served.client().chat.completions.create(
        model="other",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "What is it?"},
        ],
    )
    assert many.choices[0].message.content == "list:3"  # several: a list of role/content dicts
    given = client.chat.completions.create(
        model="ctxfold",
        messages=[{"role": "user", "content": "What is it?"}],
        extra_body={"context": {"a": 1, "b": 2}},
    )
    assert given.choices[0].message.content == "dict:2"


def test_a_streamed_completion_shows_progress_then_the_answer(served: Served) -> None:
    stream = served.client().chat.completions.create(
        model="ctxfold",
        messages=[{"role": "system", "content": "abc"}, {"role": "user", "content": "What?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    progress = [
        c.choices[0].delta.model_extra.get("reasoning_content")
        for c in chunks
        if c.choices and c.choices[0].delta.model_extra.get("reasoning_content")
    ]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "str:3"
    assert progress[0] == "turn 1: the root model is thinking\n"
    assert any("2 sub-calls done" in p for p in progress)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals[-1].choices[0].finish_reason == "stop"
    assert finals[-1].model_extra["ctxfold"]["stop_reason"] == "ready"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(served: Served) -> None:
    client = served.client()
    raw = httpx.Client(base_url=served.url, timeout=30)
    cases = [
        (raw.post("/chat/completions", content=b"{not json"), 400, "not valid JSON"),
        (raw.post("/chat/completions", json={"model": "ctxfold"}), 400, "'messages'"),
        (
            raw.post(
                "/chat/completions",
                json={"model": "ctxfold", "messages": [{"role": "system", "content": "x"}]},
            ),
            400,
            "last message must be a user message",
        ),
        (
            raw.post("/chat/completions", content=b"{" + b" " * 60_000 + b"}"),
            413,
            "over this server's limit",
        ),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="does not exist here"):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "q"}])
    with pytest.raises(openai.BadRequestError, match="over this server's cap"):
        client.chat.completions.create(
            model="ctxfold",
            messages=[{"role": "user", "content": "q"}],
            extra_body={"budget": {"tokens": 10**9}},
        )
    with pytest.raises(openai.BadRequestError, match="unknown budget field"):
        client.chat.completions.create(
            model="ctxfold",
            messages=[{"role": "user", "content": "q"}],
            extra_body={"budget": {"dollars": 1}},
        )
    # ... and it still answers
    ok = client.chat.completions.create(
        model="ctxfold", messages=[{"role": "user", "content": "q"}]
    )
    assert ok.choices[0].message.content == "str:0"


def test_a_typed_answer_through_response_format(fake: FakeOpenAIServer) -> None:
    def reply(messages: list[dict[str, Any]]) -> str:
        return '```python\nanswer["content"] = {"n": len(context)}\nanswer["ready"] = True\n```'

    fake.reply = reply
    served = _serve(fake.base_url)
    try:
        done = served.client().chat.completions.create(
            model="ctxfold",
            messages=[{"role": "system", "content": "12345"}, {"role": "user", "content": "n?"}],
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "count",
                    "schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
                },
            },
        )
    finally:
        _stop(served)
    assert json.loads(done.choices[0].message.content or "") == {"n": 5}
    assert done.model_extra["ctxfold"]["value"] == {"n": 5}


def test_keys_are_required_when_given(fake: FakeOpenAIServer) -> None:
    served = _serve(fake.base_url, "--api-key", "k1", "--api-key", "k2")
    try:
        with pytest.raises(openai.AuthenticationError):
            served.client("wrong").models.list()
        assert [m.id for m in served.client("k2").models.list()] == ["ctxfold"]
    finally:
        _stop(served)


def _slow_root(seconds: float) -> Any:
    def reply(messages: list[dict[str, Any]]) -> str:
        if messages[-1]["content"].startswith("sub "):
            return "ok"
        if "Output:" in messages[-1]["content"]:
            return '```python\nanswer["content"] = "done"\nanswer["ready"] = True\n```'
        return f"```python\nimport time\ntime.sleep({seconds})\nprint(llm_query('sub x'))\n```"

    return reply


def test_a_full_server_says_429_with_retry_after(fake: FakeOpenAIServer) -> None:
    fake.reply = _slow_root(3)
    served = _serve(fake.base_url, "--max-concurrent", "1", "--max-queue", "0")
    try:
        first: list[Any] = []
        busy = threading.Thread(
            target=lambda: first.append(
                served.client().chat.completions.create(
                    model="ctxfold", messages=[{"role": "user", "content": "q"}]
                )
            )
        )
        busy.start()
        time.sleep(1.0)
        response = httpx.post(
            f"{served.url}/chat/completions",
            json={"model": "ctxfold", "messages": [{"role": "user", "content": "q"}]},
            timeout=30,
        )
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        busy.join(60)
        assert first[0].choices[0].message.content == "done"
    finally:
        _stop(served)


def test_a_client_that_leaves_cancels_its_run(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    fake.reply = _slow_root(2)
    served = _serve(fake.base_url, "--trace-dir", str(tmp_path))
    try:
        with httpx.stream(
            "POST",
            f"{served.url}/chat/completions",
            json={
                "model": "ctxfold",
                "messages": [{"role": "user", "content": "q"}],
                "stream": True,
            },
            timeout=30,
        ) as response:
            next(response.iter_lines())  # the run has started; now leave
        end = _run_end(tmp_path)
        assert end.stop_reason == "cancelled" and end.answer == ""
    finally:
        _stop(served)


def test_a_client_that_times_out_cancels_its_run(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    fake.reply = _slow_root(2)
    served = _serve(fake.base_url, "--trace-dir", str(tmp_path))
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{served.url}/chat/completions",
                json={"model": "ctxfold", "messages": [{"role": "user", "content": "q"}]},
                timeout=1.0,
            )
        assert _run_end(tmp_path).stop_reason == "cancelled"
    finally:
        _stop(served)


def _run_end(folder: Path) -> Any:
    """The run_end event of the one trace in ``folder``, once it is written."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for path in folder.glob("*.jsonl"):
            ends = [e for e in Trace.load(path) if e.type == "run_end"]
            if ends:
                return ends[0]
        time.sleep(0.2)
    raise AssertionError("no run_end in the traces")


def test_sigterm_lets_a_running_request_finish_and_leaves_no_worker(
    fake: FakeOpenAIServer, no_orphans: None
) -> None:
    fake.reply = _slow_root(2)
    served = _serve(fake.base_url)
    answers: list[Any] = []
    request = threading.Thread(
        target=lambda: answers.append(
            served.client().chat.completions.create(
                model="ctxfold", messages=[{"role": "user", "content": "q"}]
            )
        )
    )
    request.start()
    time.sleep(1.0)
    served.process.send_signal(signal.SIGTERM)
    request.join(60)
    served.process.wait(60)
    assert answers and answers[0].choices[0].message.content == "done"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served.url}/models", timeout=5)


def test_bad_flags_are_one_line_errors() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ctxfold", "serve", "--alias", "nonsense", "--model", "openai:x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "NAME=MODEL_SPEC" in done.stderr


SETTLED = """
import gc, sys
import ctxfold
from ctxfold.cli._common import settle_heap
class Extra(ctxfold.models.ScriptedModel):
    asked = False
    @property
    def priced(self):
        Extra.asked = True
        return False
extra = {"extra": Extra([], name="extra"), "claude": ctxfold.models.AnthropicModel(
    "claude-sonnet-4-5", api_key="none", base_url="http://127.0.0.1:9")}
rlm = ctxfold.RLM(model="openai:gpt-4o-mini@http://127.0.0.1:9/v1", sub_model=sys.argv[1],
                  models=extra)
sdks = ("genai_prices.data", "openai", "anthropic")
loaded = [name in sys.modules for name in sdks]
settle_heap([rlm])
print(loaded, [name in sys.modules for name in sdks], gc.get_freeze_count(),
      len(gc.get_objects()), Extra.asked, sep=";")
"""


def test_a_long_lived_verb_settles_its_heap_before_serving() -> None:
    # serve and mcp call this once set up: the price table and the SDKs are loaded then, and
    # all start-up made is frozen, so full collections while serving walk only what serving makes.
    out = (
        subprocess.run(
            [sys.executable, "-c", SETTLED, "openai:gpt-4o@http://127.0.0.1:9/v1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        .stdout.strip()
        .split(";")
    )
    loaded_before, loaded_after, frozen, tracked = out[0], out[1], int(out[2]), int(out[3])
    # the price table, and the SDKs of the root and an extra model, load before the freeze
    assert (loaded_before, loaded_after) == ("[False, False, False]", "[True, True, True]")
    assert frozen > 20_000 and tracked < 1_000
    assert out[4] == "True"  # an extra model's price is looked up too
