"""State shared by every engine of one run (the top run and its child RLMs)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ctxfold.budget import Budget, BudgetMeter
from ctxfold.engine._extension import Extension
from ctxfold.models import Model, TokenUsage
from ctxfold.sandbox import Sandbox
from ctxfold.tools import Tool
from ctxfold.trace import Event, Trace
from ctxfold.usage import UsageMeter


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Knobs of the root loop that are not budgets."""

    concurrency: int = 16  # sub-calls in flight at once per engine
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

    def account(self, *, root: bool, depth: int, model: str, usage: TokenUsage) -> None:
        """Record one call's usage in the usage roll-up and against the budget."""
        self.usage.record(root=root, depth=depth, model=model, usage=usage)
        self.meter.add_usage(usage.total, usage.cost_usd)
