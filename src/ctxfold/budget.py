"""Run budgets: the frozen :class:`Budget` users pass in, and the host-side :class:`BudgetMeter`."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, fields
from typing import Any

from ctxfold.errors import BudgetError, CtxfoldError

# What a model call claims for its reply when it sets no max_tokens (tokens; see reserve_tokens).
OUTPUT_CLAIM = 1024


class BudgetSpent(CtxfoldError):
    """A model call was not started: the calls already made or in flight claim the whole
    ``limit`` (``"tokens"``) of the run's budget."""

    def __init__(self, limit: str) -> None:
        super().__init__(f"the run's {limit} budget is spent")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits of one run. ``None`` means unlimited.

    Attributes:
        iterations: root-model turns.
        depth: levels of recursion. 1 (the default, as in the paper): sub-calls are plain LLM
            calls and ``rlm_query`` falls back to one; 2: ``rlm_query`` starts child RLMs whose
            own sub-calls are plain; 0: no sub-calls at all (an RLM "without sub-calls").
        tokens: input + output tokens over root and sub calls.
        usd: dollars over all calls whose price is known.
        seconds: wall time of the whole run.
        cell_seconds: time one code cell may run, not counting time spent waiting on sub-calls.
        sub_calls: number of sub-LLM calls.
        max_errors: consecutive cells ending in an exception before the run stops.

    NaN is refused everywhere. ``float("inf")`` is accepted for ``usd``, ``seconds`` and
    ``cell_seconds`` and means "unlimited" (the same as ``None``); the whole-number limits take
    ``None`` for that.
    """

    iterations: int = 30
    depth: int = 1
    tokens: int | None = None
    usd: float | None = None
    seconds: float | None = None
    cell_seconds: float = 120
    sub_calls: int | None = None
    max_errors: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name not in ("iterations", "depth", "cell_seconds"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BudgetError(f"Budget.{f.name} must be a number, got {value!r}")
            if math.isnan(value):  # NaN compares false with everything: no limit would hit
                raise BudgetError(f"Budget.{f.name} must be a number, got {value!r}")
            if f.name in ("iterations", "tokens", "sub_calls", "max_errors", "depth") and (
                not isinstance(value, int)
            ):
                raise BudgetError(f"Budget.{f.name} must be a whole number, got {value!r}")
            minimum = 0 if f.name == "depth" else 1 if f.name == "iterations" else 0
            if value < minimum or (f.name in ("cell_seconds", "seconds") and value <= 0):
                raise BudgetError(f"Budget.{f.name} must be positive, got {value!r}")


def budget_from_dict(data: Any) -> Budget:
    """A :class:`Budget` from its dict form (a trace, a request body); :class:`BudgetError` names
    what is wrong: not a dict, an unknown field, or a bad value."""
    if not isinstance(data, dict):
        raise BudgetError(f"a budget must be a dict of limits, not {type(data).__name__}")
    known = {f.name for f in fields(Budget)}
    unknown = sorted(str(k)[:40] for k in data if k not in known)
    if unknown:
        raise BudgetError(
            f"unknown budget field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    return Budget(**data)


class BudgetMeter:
    """Thread-safe running totals of one run (shared by the root loop, the broker and child runs).

    ``exhausted()`` names the first limit that is spent, or returns ``None``.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # a call in flight settled its claim
        self._started = time.monotonic()
        self.iterations = 0
        self.tokens = 0
        self.usd = 0.0
        self.sub_calls = 0
        self.reserved = 0  # tokens claimed by calls in flight

    def add_iteration(self) -> None:
        with self._lock:
            self.iterations += 1

    def reserve_sub_call(self) -> bool:
        """Count one sub-call if the budget allows it; ``False`` means it must not be made."""
        with self._lock:
            if self._spent_locked(include_iterations=False) is not None:
                return False
            self.sub_calls += 1
            return True

    def add_usage(self, tokens: int, usd: float | None) -> None:
        with self._lock:
            self.tokens += tokens
            if usd:
                self.usd += usd

    def reserve_tokens(self, claim: int) -> bool:
        """Claim ``claim`` tokens (a call's prompt and its longest reply) before the call starts.

        A call starts while some of ``Budget.tokens`` is neither spent nor claimed by calls in
        flight; when the claims fill it, it waits for them to settle (most replies are far
        shorter than their claim). ``False``: the tokens are spent, so the call must not start.
        A run therefore overshoots by at most the last call let in.
        """
        limit = self.budget.tokens
        with self._settled:
            while limit is not None and self.tokens + self.reserved >= limit:
                if self.reserved == 0:
                    return False
                self._settled.wait()
            self.reserved += claim
            return True

    def settle(self, claim: int, tokens: int, usd: float | None) -> None:
        """Replace a call's claim by what it spent (``tokens=0`` for a call that failed)."""
        with self._settled:
            self.reserved -= claim
            self.tokens += tokens
            if usd:
                self.usd += usd
            self._settled.notify_all()

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    @property
    def deadline(self) -> float | None:
        """When ``Budget.seconds`` runs out, as a ``time.monotonic()`` value (``None``: never)."""
        seconds = self.budget.seconds
        if seconds is None or math.isinf(seconds):
            return None
        return self._started + seconds

    def calls_allowed(self, wanted: int) -> int:
        """How many of ``wanted`` sub-calls the budget could still allow (none once a shared
        limit is spent). Lets a batch refuse its surplus before any of it is queued."""
        with self._lock:
            if self._spent_locked(include_iterations=False) is not None:
                return 0
            if self.budget.sub_calls is None:
                return wanted
            return max(0, min(wanted, self.budget.sub_calls - self.sub_calls))

    def exhausted(self) -> str | None:
        """The name of the first spent limit (``"iterations"``, ``"tokens"`` ...) or ``None``."""
        with self._lock:
            return self._spent_locked(include_iterations=True)

    def _spent_locked(self, *, include_iterations: bool) -> str | None:
        b = self.budget
        if include_iterations and self.iterations >= b.iterations:
            return "iterations"
        if b.tokens is not None and self.tokens >= b.tokens:
            return "tokens"
        if b.usd is not None and self.usd >= b.usd:
            return "usd"
        if b.seconds is not None and self.elapsed() >= b.seconds:
            return "seconds"
        if b.sub_calls is not None and self.sub_calls >= b.sub_calls:
            return "sub_calls"
        return None

    def remaining(self) -> dict[str, Any]:
        """What is left, as the in-sandbox ``budget()`` returns it."""
        b = self.budget
        with self._lock:
            return {
                "iterations": b.iterations - self.iterations,
                "tokens": None if b.tokens is None else max(0, b.tokens - self.tokens),
                "usd": None if b.usd is None else max(0.0, b.usd - self.usd),
                "seconds": None if b.seconds is None else max(0.0, b.seconds - self.elapsed()),
                "sub_calls": None if b.sub_calls is None else max(0, b.sub_calls - self.sub_calls),
                "depth": b.depth,
            }
