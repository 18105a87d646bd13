"""State shared by every engine of one run (the top run and its child RLMs)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ctxfold.budget import OUTPUT_CLAIM, Budget, BudgetMeter, BudgetSpent
from ctxfold.citations import Citation, as_records
from ctxfold.engine._extension import Extension
from ctxfold.models import Completion, Message, Model, TokenUsage, count_message_tokens
from ctxfold.sandbox import Sandbox
from ctxfold.tools import Tool
from ctxfold.trace import Event, RunEnd, Trace
from ctxfold.usage import Usage, UsageMeter


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Knobs of the root loop that are not budgets."""

    concurrency: int = 16  # sub-calls in flight at once per engine
    choice_pack: int = 1  # small items with the same choices asked together, at most this many
    output_limit: int = 8000  # characters of cell output shown to the root model
    prompt_profile: str = "concise"  # "concise" | "small"
    history_chars: int = 120_000  # root conversation is trimmed to about this many characters
    # past this many characters the root conversation is compacted (None: never)
    compact_chars: int | None = None
    # What an extension changes in the root conversation (see _extension.py); None: nothing.
    extension: Extension | None = None


@dataclass(slots=True)
class RunShared:
    """What the engines of one run share: models, limits, meters, the trace."""

    root_model: Model
    sub_model: Model
    models: dict[str, Model]  # names that llm_query(model=...) may pick
    budget: Budget
    options: EngineOptions
    make_sandbox: Callable[[], Sandbox]
    trace: Trace
    meter: BudgetMeter = field(init=False)
    usage: UsageMeter = field(default_factory=UsageMeter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    tools: tuple[Tool, ...] = ()  # given to sub-LLMs only
    tool_turns: int = 6  # tool calls allowed per sub-call
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.meter = BudgetMeter(self.budget)

    def next_id(self) -> int:
        return next(self._ids)

    def continue_ids(self, start: int) -> None:
        """Number the next sub-calls from ``start`` (a resumed run goes on after its trace's)."""
        self._ids = itertools.count(start)

    def emit(self, event: Event) -> None:
        self.trace.emit(event)

    def call_options(self) -> dict[str, Any]:
        """Options every model call of the run gets: its deadline, when ``Budget.seconds`` is
        set, so that a server that never answers cannot outlive the run's time."""
        deadline = self.meter.deadline
        return {} if deadline is None else {"deadline": deadline}

    def complete(
        self,
        model: Model,
        messages: list[Message],
        *,
        root: bool,
        depth: int,
        claim: bool = True,
        **options: Any,
    ) -> Completion:
        """One model call of the run, under its budget: the call first claims its worst case
        (prompt tokens plus ``max_tokens``, or :data:`~ctxfold.budget.OUTPUT_CLAIM`), is refused
        with :class:`~ctxfold.budget.BudgetSpent` when nothing of the token budget is left
        unclaimed, and settles its real usage when it ends. ``claim=False``: a call the run
        makes whatever the budget (the root's last word) is only accounted."""
        if not claim:
            completion = model.complete(messages, **(self.call_options() | options))
            self.account(root=root, depth=depth, model=model.name, usage=completion.usage)
            return completion
        worst = count_message_tokens(messages) + int(options.get("max_tokens") or OUTPUT_CLAIM)
        if not self.meter.reserve_tokens(worst):
            raise BudgetSpent("tokens")
        try:
            completion = model.complete(messages, **(self.call_options() | options))
        except BaseException:
            self.meter.settle(worst, 0, None)
            raise
        usage = completion.usage
        self.usage.record(root=root, depth=depth, model=model.name, usage=usage)
        self.meter.settle(worst, usage.billed, usage.cost_usd)
        return completion

    def end_run(
        self,
        answer: str,
        ready: bool,
        reason: str,
        *,
        seconds: float,
        citations: Sequence[Citation] = (),
    ) -> Usage:
        """Record the end of the run (its ``run_end`` event) and return its usage."""
        usage = self.usage.snapshot()
        self.emit(
            RunEnd(
                t=self.trace.elapsed(),
                answer=answer,
                ready=ready,
                stop_reason=reason,
                usage=usage.to_dict(),
                citations=as_records(citations),
                seconds=seconds,
            )
        )
        return usage

    def account(self, *, root: bool, depth: int, model: str, usage: TokenUsage) -> None:
        """Record one call's usage in the usage roll-up and against the budget."""
        self.usage.record(root=root, depth=depth, model=model, usage=usage)
        self.meter.add_usage(usage.billed, usage.cost_usd)
