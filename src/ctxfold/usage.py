"""Token and cost accounting, rolled up by role (root/sub), by model and by depth."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from ctxfold.models import TokenUsage


@dataclass(slots=True)
class CallStats:
    """Totals over a set of model calls."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    estimated: bool = False  # some of the token counts were estimated, not reported by the API
    cache_hits: int = 0  # calls served by the response cache (not billed)

    def add(self, usage: TokenUsage) -> None:
        self.calls += 1
        self.cache_hits += usage.cache_hit
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cached_tokens += usage.cached_tokens
        self.cost_usd += usage.cost_usd or 0.0
        self.estimated = self.estimated or usage.estimated

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class Usage:
    """Usage of one run: ``root`` is the top-level root model; everything else is ``sub``
    (sub-LLM calls and child RLMs). ``per_model`` is keyed by model name, ``per_depth`` by the
    depth of the call (0 = the top root model, 1 = its sub-calls and child roots, ...)."""

    root: CallStats = field(default_factory=CallStats)
    sub: CallStats = field(default_factory=CallStats)
    per_model: dict[str, CallStats] = field(default_factory=dict)
    per_depth: dict[int, CallStats] = field(default_factory=dict)

    @property
    def root_calls(self) -> int:
        return self.root.calls

    @property
    def root_input_tokens(self) -> int:
        return self.root.input_tokens

    @property
    def root_output_tokens(self) -> int:
        return self.root.output_tokens

    @property
    def sub_calls(self) -> int:
        return self.sub.calls

    @property
    def sub_input_tokens(self) -> int:
        return self.sub.input_tokens

    @property
    def sub_output_tokens(self) -> int:
        return self.sub.output_tokens

    @property
    def cost_usd(self) -> float:
        return self.root.cost_usd + self.sub.cost_usd

    @property
    def total_tokens(self) -> int:
        return self.root.total_tokens + self.sub.total_tokens

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (used by traces, ``--json`` and the bench)."""
        return {
            "root": asdict(self.root),
            "sub": asdict(self.sub),
            "cost_usd": self.cost_usd,
            "per_model": {k: asdict(v) for k, v in self.per_model.items()},
            "per_depth": {str(k): asdict(v) for k, v in self.per_depth.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        return cls(
            root=CallStats(**data["root"]),
            sub=CallStats(**data["sub"]),
            per_model={k: CallStats(**v) for k, v in data["per_model"].items()},
            per_depth={int(k): CallStats(**v) for k, v in data["per_depth"].items()},
        )


class UsageMeter:
    """Thread-safe recorder behind :class:`Usage`; ``snapshot()`` gives an independent copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage = Usage()

    def record(self, *, root: bool, depth: int, model: str, usage: TokenUsage) -> None:
        with self._lock:
            u = self._usage
            (u.root if root and depth == 0 else u.sub).add(usage)
            u.per_model.setdefault(model, CallStats()).add(usage)
            u.per_depth.setdefault(depth, CallStats()).add(usage)

    def snapshot(self) -> Usage:
        with self._lock:
            return Usage.from_dict(self._usage.to_dict())
