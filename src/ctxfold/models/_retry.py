"""The retry policy the HTTP model clients share, and the mapping of SDK errors onto it.

Retried: HTTP 429 and 5xx, connection errors, timeouts, and bodies we cannot read (malformed JSON,
no choices). Never retried: any other 4xx. A ``Retry-After`` header (seconds or an HTTP date) sets
the wait, capped at ``max_retry_after``; otherwise the wait is exponential with jitter.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from types import ModuleType
from typing import Any, TypeVar

from ctxfold.errors import ModelError
from ctxfold.models._bounded import ResponseTooLarge

__all__ = [
    "BadResponseError",
    "CallFailure",
    "RetryPolicy",
    "classify_sdk_error",
    "parse_retry_after",
]

_T = TypeVar("_T")

_SECRET = re.compile(r"\b(sk-(?:ant-|proj-)?)[A-Za-z0-9_\-*]{6,}")
_REASON_CHARS = 200


class BadResponseError(Exception):
    """A 2xx answer the client could not use (not JSON, no choices...). Retryable."""


@dataclass(frozen=True, slots=True)
class CallFailure:
    """How one failed attempt is described (one line) and whether it is worth another try."""

    reason: str
    retryable: bool
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter, honouring ``Retry-After``.

    Args:
        max_attempts: attempts in all, the first one included (1 = no retries).
        base_delay: the first backoff in seconds; it doubles per attempt (0 = retry at once).
        max_delay: the largest backoff in seconds.
        max_retry_after: the largest wait a server's ``Retry-After`` may ask for.
        sleep: the blocking sleep (injectable for tests).
        async_sleep: the async sleep (injectable for tests).
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    async_sleep: Callable[[float], Awaitable[None]] = field(
        default=asyncio.sleep, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if min(self.base_delay, self.max_delay, self.max_retry_after) < 0:
            raise ValueError("retry delays must not be negative")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (counting from 1)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return ceiling * (0.5 + random.random() / 2)

    def call(
        self,
        attempt: Callable[[], _T],
        classify: Callable[[Exception], CallFailure | None],
        what: str,
        deadline: float | None = None,
    ) -> _T:
        """Run ``attempt`` until it succeeds or the policy gives up with a :class:`ModelError`.

        ``classify`` describes an exception, or returns ``None`` for one that is not a model
        failure (a bug, a bad argument): that one propagates untouched. Past ``deadline`` (a
        ``time.monotonic()`` value) no attempt starts and no backoff waits.
        """
        failure: CallFailure | None = None
        for number in range(1, self.max_attempts + 1):
            _check_deadline(deadline, what, failure, number - 1)
            try:
                return attempt()
            except Exception as exc:
                failure = classify(exc)
                if failure is None:
                    raise
                if not failure.retryable or number == self.max_attempts:
                    raise ModelError(_message(what, failure, number)) from exc
            self.sleep(_until(deadline, self.delay(number, failure.retry_after)))
        raise AssertionError("unreachable")  # pragma: no cover

    async def acall(
        self,
        attempt: Callable[[], Awaitable[_T]],
        classify: Callable[[Exception], CallFailure | None],
        what: str,
        deadline: float | None = None,
    ) -> _T:
        """The async twin of :meth:`call`: ``attempt`` returns an awaitable."""
        failure: CallFailure | None = None
        for number in range(1, self.max_attempts + 1):
            _check_deadline(deadline, what, failure, number - 1)
            try:
                return await attempt()
            except Exception as exc:
                failure = classify(exc)
                if failure is None:
                    raise
                if not failure.retryable or number == self.max_attempts:
                    raise ModelError(_message(what, failure, number)) from exc
            await self.async_sleep(_until(deadline, self.delay(number, failure.retry_after)))
        raise AssertionError("unreachable")  # pragma: no cover


def deadline_option(options: Mapping[str, Any]) -> float | None:
    """The ``deadline`` call option (a ``time.monotonic()`` value by which the call must end,
    retries included), or ``None``."""
    value = options.get("deadline")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def attempt_timeout(timeout: Any, deadline: float | None) -> Any:
    """One attempt's timeout: ``timeout``, cut to the time left before ``deadline``."""
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), 0.001)
    return min(timeout, left) if isinstance(timeout, int | float) else left


def _until(deadline: float | None, pause: float) -> float:
    return pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic()))


def _check_deadline(
    deadline: float | None, what: str, failure: CallFailure | None, attempts: int
) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        after = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
        why = f": {failure.reason}" if failure is not None else ""
        raise ModelError(f"{what}: the run's time budget ran out{after}{why}")


def _message(what: str, failure: CallFailure, attempts: int) -> str:
    if not failure.retryable:
        return f"{what} failed: {failure.reason} (not retried)"
    plural = "s" if attempts > 1 else ""
    return f"{what} failed after {attempts} attempt{plural}: {failure.reason}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def classify_sdk_error(exc: Exception, sdk: ModuleType) -> CallFailure | None:
    """Describe an exception raised by the ``openai`` or ``anthropic`` SDK (both share the shape:
    ``APIStatusError``, ``APITimeoutError``, ``APIConnectionError``)."""
    if isinstance(exc, BadResponseError):
        return CallFailure(_one_line(str(exc)), retryable=True)
    too_large = exc if isinstance(exc, ResponseTooLarge) else exc.__cause__
    if isinstance(too_large, ResponseTooLarge):  # sending the request again changes nothing
        return CallFailure(_one_line(str(too_large)), retryable=False)
    if isinstance(exc, sdk.APIStatusError):
        status = int(exc.status_code)
        retryable = status == 429 or status >= 500
        retry_after = None
        if retryable:
            retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
        reason = f"HTTP {status} {_phrase(status)}"
        detail = _error_detail(exc.body) or _one_line(exc.response.text)
        if detail:
            reason = f"{reason}: {detail}"
        return CallFailure(reason, retryable, retry_after)
    if isinstance(exc, sdk.APITimeoutError):
        return CallFailure("request timed out", retryable=True)
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        return CallFailure(f"connection error{detail}", retryable=True)
    return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _error_detail(body: object) -> str:
    """The ``message`` of an API error body (``{"error": {"message": ...}}`` or the inner dict)."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            body = inner
        message = body.get("message")
        if isinstance(message, str):
            return _one_line(message)
    return ""


def _one_line(text: str) -> str:
    text = _SECRET.sub(r"\1***", " ".join(text.split()))
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"
