"""What a run (or one question of a session) gives back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ctxfold.citations import Citation, resolve
from ctxfold.trace import Trace
from ctxfold.usage import Usage

if TYPE_CHECKING:
    from ctxfold.context import PreparedContext
    from ctxfold.engine import Outcome, RunShared


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of :meth:`RLM.run`.

    ``ready`` is true when the model declared its answer final; false when a budget (or an error)
    ended the run, in which case ``answer`` is the best answer so far. ``stop_reason`` says why
    the run ended: ``"ready"``, the name of the spent budget, ``"max_errors"``, ``"error: ..."``.
    With ``schema=``, ``value`` is the checked value of a ready answer (``answer`` is its JSON
    text); it is ``None`` otherwise. ``citations`` are the spans the answer cites, each quoted
    from the input by the host (see :mod:`ctxfold.citations`).
    """

    answer: str
    ready: bool
    usage: Usage
    trace: Trace
    stop_reason: str
    iterations: int
    seconds: float
    value: Any = None
    citations: tuple[Citation, ...] = ()


def finish_run(
    shared: RunShared,
    outcome: Outcome,
    inputs: Sequence[PreparedContext],
    elapsed: Callable[[], float],
) -> Result:
    """End a run that returned ``outcome``: its citations resolved against ``inputs``, its
    ``run_end`` recorded, its :class:`Result` made (``elapsed()``: the run's seconds)."""
    citations = tuple(resolve(outcome.sources, inputs))
    seconds = elapsed()
    usage = shared.end_run(
        outcome.answer, outcome.ready, outcome.stop_reason, seconds=seconds, citations=citations
    )
    return Result(
        answer=outcome.answer,
        ready=outcome.ready,
        usage=usage,
        trace=shared.trace,
        stop_reason=outcome.stop_reason,
        iterations=outcome.turns,
        seconds=seconds,
        value=outcome.value,
        citations=citations,
    )
