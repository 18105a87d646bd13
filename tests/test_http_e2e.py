"""A whole run over real HTTP: root and sub-calls against an OpenAI-compatible server."""

from __future__ import annotations

import ctxfold
from ctxfold.testing.fake_openai import FakeOpenAIServer

ROOT_CODE = """```python
chunks = [context[i:i + 10] for i in range(0, len(context), 10)]
replies = llm_batch([f"chunk: {c}" for c in chunks])
print(len(replies), replies[0])
```"""


def _reply(messages: list[dict]) -> str:
    last = messages[-1]["content"]
    if last.startswith("chunk: "):
        return f"seen {len(last) - 7}"
    if "Output:" in last:
        return '```python\nanswer["content"] = "64 chunks"\nanswer["ready"] = True\n```'
    return ROOT_CODE


def test_run_over_http_with_parallel_batch(no_orphans) -> None:
    with FakeOpenAIServer(_reply, latency=0.2) as server:
        rlm = ctxfold.RLM(
            model=f"openai:fake-root@{server.base_url}",
            sub_model=f"openai:fake-sub@{server.base_url}",
        )
        result = rlm.run("How many chunks?", context="x" * 640)
        rlm.close()
    assert result.ready and result.answer == "64 chunks"
    assert result.usage.sub_calls == 64
    assert result.usage.root_calls == 2
    assert result.usage.per_model["fake-sub"].calls == 64
    assert result.usage.sub_input_tokens > 0 and result.usage.root_input_tokens > 0
    # The batch ran in parallel at the default concurrency of 16.
    assert 12 <= server.max_in_flight <= 16


def test_concurrency_setting_bounds_requests_in_flight() -> None:
    with FakeOpenAIServer(_reply, latency=0.1) as server:
        rlm = ctxfold.RLM(
            model=f"openai:fake@{server.base_url}",
            concurrency=4,
        )
        result = rlm.run("How many chunks?", context="x" * 640)
        rlm.close()
    assert result.ready
    assert 2 <= server.max_in_flight <= 4
