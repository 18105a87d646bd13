"""The bench seam: a task makes instances from a seed and scores predictions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Instance:
    """One question over one input.

    ``context`` is what :meth:`ctxfold.RLM.run` receives (str, list or dict). ``gold`` is the
    reference the task's scorer compares against. ``meta`` holds at least ``length_chars``,
    ``length_tokens`` (estimated, cl100k), ``seed`` and the task's variant name.
    """

    task: str
    id: str
    question: str
    context: Any
    gold: Any
    meta: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    """A benchmark task. Generation is deterministic in ``seed`` and works offline."""

    name: str
    default_lengths: tuple[int, ...]  # input lengths in tokens used when --lengths is not given

    def generate(self, *, n: int, length: int, seed: int) -> list[Instance]:
        """``n`` instances whose inputs are about ``length`` tokens long."""
        ...

    def score(self, instance: Instance, prediction: str) -> float:
        """A score in [0, 1] for a model's final answer text."""
        ...
