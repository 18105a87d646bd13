"""Model faults through whole runs over real HTTP: the run survives, retries stay bounded, a failed
sub-call spoils only its own slot, and usage counts each successful completion exactly once."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import ctxfold
from ctxfold.models import OpenAIModel, RetryPolicy
from ctxfold.testing.fake_openai import FakeOpenAIServer, Fault

ATTEMPTS = 3
PROMPTS = ["alpha one", "beta two", "gamma three"]
BATCH = f"""```python
import json
results = llm_batch({PROMPTS!r})
print(json.dumps(results))
```"""
FINISH = "```python\nFINAL(json.dumps(results))\n```"


def root_reply(messages: list[dict[str, Any]]) -> str:
    """Turn 1: a batch of three sub-calls; turn 2 (after output): the slots as the answer."""
    return FINISH if "Output:" in messages[-1]["content"] else BATCH


def sub_reply(messages: list[dict[str, Any]]) -> str:
    return f"answer to {messages[-1]['content']}"


def words(text: str) -> int:
    return len(text.split())


class Sleeps:
    """A RetryPolicy sleep that records the waits asked for (and really waits)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        time.sleep(seconds)


def model(
    server: FakeOpenAIServer, name: str, *, timeout: float = 5.0, sleep: Sleeps | None = None
) -> OpenAIModel:
    retry = RetryPolicy(max_attempts=ATTEMPTS, base_delay=0, sleep=sleep or time.sleep)
    return OpenAIModel(name, base_url=server.base_url, timeout=timeout, retry=retry)


def run(
    root: OpenAIModel, sub: OpenAIModel, *, concurrency: int = 16, iterations: int = 6
) -> ctxfold.Result:
    rlm = ctxfold.RLM(
        model=root,
        sub_model=sub,
        concurrency=concurrency,
        budget=ctxfold.Budget(iterations=iterations, cell_seconds=30),
    )
    try:
        return rlm.run("What do the sub-models say?", context="some context")
    finally:
        root.close()
        sub.close()


def expected_tokens(requests: list[dict[str, Any]], reply: Any) -> tuple[int, int]:
    """(input, output) tokens the fake server reports for these (successful) requests."""
    inputs = sum(words(str(m.get("content") or "")) for r in requests for m in r["messages"])
    outputs = sum(words(reply(r["messages"])) for r in requests)
    return inputs, outputs


def slots(result: ctxfold.Result) -> list[str]:
    assert result.ready, result.stop_reason
    value = json.loads(result.answer)
    assert isinstance(value, list) and len(value) == len(PROMPTS)
    return value


# -- root-call faults ----------------------------------------------------------------------


ROOT_FAULTS = [
    pytest.param(Fault("429", times=2, retry_after=0.2), id="429-retry-after"),
    pytest.param(Fault("500", times=2), id="500"),
    pytest.param(Fault("503", times=1), id="503"),
    pytest.param(Fault("stall", times=1, seconds=1.5), id="stall"),
    pytest.param(Fault("malformed", times=2), id="malformed"),
    pytest.param(Fault("cutoff", times=2), id="cutoff"),
    pytest.param(Fault("empty", times=2), id="empty-choices"),
]


@pytest.mark.parametrize("fault", ROOT_FAULTS)
def test_root_fault_is_retried_and_counted_once(fault: Fault, no_orphans: None) -> None:
    sleeps = Sleeps()
    with (
        FakeOpenAIServer(root_reply, faults=[fault]) as root_server,
        FakeOpenAIServer(sub_reply) as sub_server,
    ):
        result = run(
            model(root_server, "root", timeout=0.5, sleep=sleeps),
            model(sub_server, "sub"),
        )
        root_requests = list(root_server.requests)
        sub_requests = list(sub_server.requests)
    assert slots(result) == [f"answer to {p}" for p in PROMPTS]
    # Each fault costs exactly one extra request; then the two turns succeed.
    assert len(root_requests) == fault.times + 2
    assert len(sleeps.delays) == fault.times
    if fault.retry_after is not None:
        assert sleeps.delays == [pytest.approx(0.2)] * fault.times
    # Usage counts the successful root completions only, with the server's token counts.
    good = root_requests[fault.times :]
    usage = result.usage
    assert usage.root_calls == 2 == usage.per_model["root"].calls
    assert (usage.root_input_tokens, usage.root_output_tokens) == expected_tokens(good, root_reply)
    assert usage.sub_calls == 3 == usage.per_model["sub"].calls == len(sub_requests)
    assert (usage.sub_input_tokens, usage.sub_output_tokens) == expected_tokens(
        sub_requests, sub_reply
    )


def test_root_failing_every_attempt_ends_the_run_with_an_error(no_orphans: None) -> None:
    with (
        FakeOpenAIServer(root_reply, faults=[Fault("500", times=50)]) as root_server,
        FakeOpenAIServer(sub_reply) as sub_server,
    ):
        result = run(model(root_server, "root"), model(sub_server, "sub"))
        root_requests = len(root_server.requests)
        sub_requests = len(sub_server.requests)
    assert not result.ready and result.answer == ""
    assert result.stop_reason.startswith("error:"), result.stop_reason
    assert "HTTP 500" in result.stop_reason and f"{ATTEMPTS} attempts" in result.stop_reason
    assert root_requests == ATTEMPTS  # bounded, and no last-word call after an error
    assert sub_requests == 0
    assert result.usage.root_calls == 0 and result.usage.total_tokens == 0


def test_root_timing_out_every_attempt_ends_the_run(no_orphans: None) -> None:
    stall = Fault("stall", times=50, seconds=2.0)
    with (
        FakeOpenAIServer(root_reply, faults=[stall]) as root_server,
        FakeOpenAIServer(sub_reply) as sub_server,
    ):
        started = time.monotonic()
        result = run(model(root_server, "root", timeout=0.3), model(sub_server, "sub"))
        took = time.monotonic() - started
        root_requests = len(root_server.requests)
    assert result.stop_reason.startswith("error:") and "timed out" in result.stop_reason
    assert root_requests == ATTEMPTS
    assert took < 0.3 * ATTEMPTS + 3.0  # the client gave up; it did not wait for the server


def test_root_client_error_is_not_retried(no_orphans: None) -> None:
    with (
        FakeOpenAIServer(root_reply, faults=[Fault("400", times=5)]) as root_server,
        FakeOpenAIServer(sub_reply) as sub_server,
    ):
        result = run(model(root_server, "root"), model(sub_server, "sub"))
        root_requests = len(root_server.requests)
    assert result.stop_reason.startswith("error:") and "not retried" in result.stop_reason
    assert root_requests == 1


def test_root_failing_mid_run_keeps_the_usage_of_the_good_turns(no_orphans: None) -> None:
    def reply(messages: list[dict[str, Any]]) -> str:
        if "Output:" in messages[-1]["content"]:
            raise RuntimeError("the second turn always fails")  # the fake sends a 500
        return BATCH

    with (
        FakeOpenAIServer(reply) as root_server,
        FakeOpenAIServer(sub_reply) as sub_server,
    ):
        result = run(model(root_server, "root"), model(sub_server, "sub"))
        root_requests = list(root_server.requests)
    assert result.stop_reason.startswith("error:") and "HTTP 500" in result.stop_reason
    assert not result.ready and result.iterations == 2
    assert len(root_requests) == 1 + ATTEMPTS
    assert result.usage.root_calls == 1
    assert (result.usage.root_input_tokens, result.usage.root_output_tokens) == expected_tokens(
        root_requests[:1], reply
    )
    assert result.usage.sub_calls == 3


# -- sub-call faults -----------------------------------------------------------------------


SUB_FAULTS = [
    pytest.param(Fault("429", retry_after=0.05), id="429-retry-after"),
    pytest.param(Fault("500"), id="500"),
    pytest.param(Fault("stall", seconds=1.5), id="stall"),
    pytest.param(Fault("malformed"), id="malformed"),
    pytest.param(Fault("cutoff"), id="cutoff"),
    pytest.param(Fault("empty"), id="empty-choices"),
]


@pytest.mark.parametrize("fault", SUB_FAULTS)
def test_sub_fault_recovered_by_a_retry(fault: Fault, no_orphans: None) -> None:
    """One faulted attempt: every slot still gets its answer, counted once."""
    with (
        FakeOpenAIServer(root_reply) as root_server,
        FakeOpenAIServer(sub_reply, faults=[fault]) as sub_server,
    ):
        result = run(model(root_server, "root"), model(sub_server, "sub", timeout=0.5))
        sub_requests = list(sub_server.requests)
    assert slots(result) == [f"answer to {p}" for p in PROMPTS]
    assert len(sub_requests) == len(PROMPTS) + 1
    good = [r for r in sub_requests if r is not sub_requests[0]]  # the first one was faulted
    usage = result.usage
    assert usage.sub_calls == 3 == usage.per_model["sub"].calls
    assert (usage.sub_input_tokens, usage.sub_output_tokens) == expected_tokens(good, sub_reply)


@pytest.mark.parametrize("fault", SUB_FAULTS)
def test_sub_fault_on_every_attempt_spoils_only_its_slot(fault: Fault, no_orphans: None) -> None:
    """The batch runs one call at a time (concurrency=1), so the first item gets every fault."""
    faults = [Fault(fault.kind, times=ATTEMPTS, retry_after=fault.retry_after, seconds=1.0)]
    with (
        FakeOpenAIServer(root_reply) as root_server,
        FakeOpenAIServer(sub_reply, faults=faults) as sub_server,
    ):
        result = run(
            model(root_server, "root"), model(sub_server, "sub", timeout=0.3), concurrency=1
        )
        sub_requests = list(sub_server.requests)
    first, *rest = slots(result)
    assert first.startswith("[error:") and f"{ATTEMPTS} attempts" in first, first
    assert rest == [f"answer to {p}" for p in PROMPTS[1:]]
    assert len(sub_requests) == ATTEMPTS + len(PROMPTS) - 1  # bounded retries
    good = sub_requests[ATTEMPTS:]
    usage = result.usage
    assert usage.sub_calls == 2 == usage.per_model["sub"].calls
    assert (usage.sub_input_tokens, usage.sub_output_tokens) == expected_tokens(good, sub_reply)


def test_failing_sub_call_in_a_parallel_batch(no_orphans: None) -> None:
    """A prompt the server always fails (HTTP 500) spoils its own slot only, in parallel too."""

    def reply(messages: list[dict[str, Any]]) -> str:
        if messages[-1]["content"] == PROMPTS[1]:
            raise RuntimeError("this prompt always fails")
        return sub_reply(messages)

    with (
        FakeOpenAIServer(root_reply) as root_server,
        FakeOpenAIServer(reply, latency=0.05) as sub_server,
    ):
        result = run(model(root_server, "root"), model(sub_server, "sub"))
        sub_requests = list(sub_server.requests)
    answers = slots(result)
    assert answers[0] == f"answer to {PROMPTS[0]}" and answers[2] == f"answer to {PROMPTS[2]}"
    assert answers[1].startswith("[error:") and "HTTP 500" in answers[1]
    failed = [r for r in sub_requests if r["messages"][-1]["content"] == PROMPTS[1]]
    assert len(failed) == ATTEMPTS and len(sub_requests) == ATTEMPTS + 2
    good = [r for r in sub_requests if r["messages"][-1]["content"] != PROMPTS[1]]
    assert result.usage.sub_calls == 2 == result.usage.per_model["sub"].calls
    assert (result.usage.sub_input_tokens, result.usage.sub_output_tokens) == expected_tokens(
        good, reply
    )


def test_sub_client_error_is_not_retried(no_orphans: None) -> None:
    with (
        FakeOpenAIServer(root_reply) as root_server,
        FakeOpenAIServer(sub_reply, faults=[Fault("400")]) as sub_server,
    ):
        result = run(model(root_server, "root"), model(sub_server, "sub"), concurrency=1)
        sub_requests = len(sub_server.requests)
    first, *rest = slots(result)
    assert first.startswith("[error:") and "not retried" in first
    assert rest == [f"answer to {p}" for p in PROMPTS[1:]]
    assert sub_requests == len(PROMPTS)
    assert result.usage.sub_calls == 2


def test_sub_model_down_entirely_still_finishes(no_orphans: None) -> None:
    with (
        FakeOpenAIServer(root_reply) as root_server,
        FakeOpenAIServer(sub_reply, faults=[Fault("503", times=100)]) as sub_server,
    ):
        result = run(model(root_server, "root"), model(sub_server, "sub"))
        sub_requests = len(sub_server.requests)
    answers = slots(result)
    assert all(a.startswith("[error:") and "HTTP 503" in a for a in answers)
    assert sub_requests == ATTEMPTS * len(PROMPTS)
    assert result.usage.sub_calls == 0 and result.usage.sub_input_tokens == 0
    assert result.usage.root_calls == 2
