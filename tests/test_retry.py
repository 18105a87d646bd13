"""RetryPolicy, Retry-After parsing and the mapping of SDK errors (no network, no real sleeps)."""

from __future__ import annotations

import email.utils
import time

import anthropic
import httpx2
import openai
import pytest

from ctxfold.errors import ModelError
from ctxfold.models import RetryPolicy
from ctxfold.models._retry import (
    BadResponseError,
    CallFailure,
    classify_sdk_error,
    parse_retry_after,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


class Flaky:
    """Fails ``failures`` times with ``error``, then returns "done"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def retryable(exc: Exception) -> CallFailure | None:
    if isinstance(exc, ConnectionError):
        return CallFailure("connection error", retryable=True)
    if isinstance(exc, PermissionError):
        return CallFailure("HTTP 403 Forbidden", retryable=False)
    return None


def no_sleep_policy(sleeps: list[float], **kwargs: float) -> RetryPolicy:
    return RetryPolicy(base_delay=0, sleep=sleeps.append, **kwargs)  # type: ignore[arg-type]


# -- the policy --------------------------------------------------------------------------------


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_delay, policy.max_delay) == (4, 0.5, 20.0)
    assert policy.max_retry_after == 60.0


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy()
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0)]:
        for _ in range(50):
            assert ceiling / 2 <= policy.delay(attempt) <= ceiling
    assert all(policy.delay(30) <= 20.0 for _ in range(50))
    assert RetryPolicy(base_delay=0).delay(3) == 0.0


def test_retry_after_wins_and_is_capped() -> None:
    policy = RetryPolicy()
    assert policy.delay(1, retry_after=7.5) == 7.5
    assert policy.delay(1, retry_after=600) == 60.0
    assert policy.delay(1, retry_after=-3) == 0.0


def test_invalid_policies() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(base_delay=-1)


def test_retries_then_succeeds() -> None:
    sleeps: list[float] = []
    attempt = Flaky(2, ConnectionError("reset"))
    assert no_sleep_policy(sleeps).call(attempt, retryable, "model 'x'") == "done"
    assert attempt.calls == 3
    assert sleeps == [0.0, 0.0]


def test_gives_up_after_max_attempts_with_a_chained_model_error() -> None:
    sleeps: list[float] = []
    error = ConnectionError("reset")
    attempt = Flaky(99, error)
    with pytest.raises(ModelError) as info:
        no_sleep_policy(sleeps, max_attempts=3).call(attempt, retryable, "model 'x'")
    assert str(info.value) == "model 'x' failed after 3 attempts: connection error"
    assert info.value.__cause__ is error
    assert attempt.calls == 3
    assert len(sleeps) == 2


def test_non_retryable_failure_raises_at_once() -> None:
    sleeps: list[float] = []
    attempt = Flaky(99, PermissionError("no"))
    with pytest.raises(ModelError, match=r"^model 'x' failed: HTTP 403 Forbidden \(not retried\)$"):
        no_sleep_policy(sleeps).call(attempt, retryable, "model 'x'")
    assert attempt.calls == 1
    assert sleeps == []


def test_unclassified_exceptions_propagate_untouched() -> None:
    attempt = Flaky(99, KeyError("bug"))
    with pytest.raises(KeyError):
        RetryPolicy().call(attempt, retryable, "model 'x'")
    assert attempt.calls == 1


async def test_async_call_retries_with_async_sleep() -> None:
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    flaky = Flaky(1, ConnectionError("reset"))

    async def attempt() -> str:
        return flaky()

    policy = RetryPolicy(base_delay=0, async_sleep=record)
    assert await policy.acall(attempt, retryable, "model 'x'") == "done"
    assert sleeps == [0.0]
    flaky = Flaky(99, ConnectionError("reset"))
    with pytest.raises(ModelError, match="after 4 attempts"):
        await policy.acall(attempt, retryable, "model 'x'")


# -- Retry-After -------------------------------------------------------------------------------


def test_parse_retry_after_seconds_and_junk() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None


def test_parse_retry_after_http_date() -> None:
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = parse_retry_after(future)
    assert seconds is not None
    assert 25 <= seconds <= 31
    past = email.utils.formatdate(time.time() - 300, usegmt=True)
    assert parse_retry_after(past) == 0.0


# -- SDK errors --------------------------------------------------------------------------------


def _status_error(sdk: object, status: int, headers: dict[str, str], body: object) -> Exception:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(status, headers=headers, request=request, json=body)
    error: Exception = sdk.APIStatusError(  # type: ignore[attr-defined]
        f"Error code: {status}", response=response, body=body
    )
    return error


@pytest.mark.parametrize("sdk", [openai, anthropic])
def test_classify_status_errors(sdk: object) -> None:
    error = _status_error(sdk, 429, {"Retry-After": "2"}, {"message": "slow down"})
    failure = classify_sdk_error(error, sdk)  # type: ignore[arg-type]
    assert failure == CallFailure("HTTP 429 Too Many Requests: slow down", True, 2.0)
    error = _status_error(sdk, 529, {}, {"error": {"type": "overloaded", "message": "busy"}})
    assert classify_sdk_error(error, sdk) == CallFailure("HTTP 529 Error: busy", True)  # type: ignore[arg-type]
    error = _status_error(sdk, 404, {"Retry-After": "2"}, {"error": {"message": "no model"}})
    assert classify_sdk_error(error, sdk) == CallFailure("HTTP 404 Not Found: no model", False)  # type: ignore[arg-type]


def test_classify_connection_errors_and_others() -> None:
    request = httpx2.Request("POST", "http://127.0.0.1/")
    timeout = openai.APITimeoutError(request=request)
    assert classify_sdk_error(timeout, openai) == CallFailure("request timed out", True)
    failure = classify_sdk_error(openai.APIConnectionError(request=request), openai)
    assert failure is not None and failure.retryable
    assert classify_sdk_error(BadResponseError("no choices"), openai) == CallFailure(
        "no choices", True
    )
    assert classify_sdk_error(ValueError("bug"), openai) is None


def test_reasons_are_one_short_line_without_keys() -> None:
    body = {"message": "Incorrect API key provided: sk-proj-abcdef123456.\n" + "x" * 500}
    failure = classify_sdk_error(_status_error(openai, 401, {}, body), openai)
    assert failure is not None
    assert "sk-proj-abcdef123456" not in failure.reason
    assert "sk-proj-***" in failure.reason
    assert "\n" not in failure.reason
    assert len(failure.reason) < 260
