"""What a run (or one question of a session) gives back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctxfold.citations import Citation
from ctxfold.trace import Trace
from ctxfold.usage import Usage


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
