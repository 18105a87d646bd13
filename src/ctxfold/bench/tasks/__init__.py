"""The benchmark tasks, by name: offline, seeded generators and their scorers.

=================  ==========================================================================
``sniah``          RULER niah_single_1/2/3: one needle in a noise or Paul Graham essay haystack
``oolong``         OOLONG trec_coarse-style label aggregation over TREC questions
``oolong_pairs``   OOLONG-Pairs-style: all user pairs meeting a condition on their labels (F1)
``codeqa``         multiple choice over CPython's standard library source
``verbatim``       copy one JSON record / CSV row / code exactly
``math``           exact integer aggregates over a generated data table
``research``       DeepDive/BrowseComp-Plus-style multi-hop questions over a generated corpus
=================  ==========================================================================

The TREC questions behind the two OOLONG tasks are public too, for probes and scripts:
:data:`TREC_LABELS`, :func:`trec_dir` and :func:`load_trec`.
"""

from __future__ import annotations

from ctxfold.bench._types import Task
from ctxfold.bench.tasks._trec import LABELS as TREC_LABELS
from ctxfold.bench.tasks._trec import TREC_DIR_ENV, TrecQuestion, load_trec, trec_dir
from ctxfold.bench.tasks.codeqa import CodeQATask
from ctxfold.bench.tasks.math import MathTask
from ctxfold.bench.tasks.oolong import OolongTask
from ctxfold.bench.tasks.oolong_pairs import OolongPairsTask
from ctxfold.bench.tasks.research import ResearchTask
from ctxfold.bench.tasks.sniah import SniahTask
from ctxfold.bench.tasks.verbatim import VerbatimTask
from ctxfold.errors import CtxfoldError

__all__ = [
    "TASKS",
    "TREC_DIR_ENV",
    "TREC_LABELS",
    "CodeQATask",
    "MathTask",
    "OolongPairsTask",
    "OolongTask",
    "ResearchTask",
    "SniahTask",
    "TrecQuestion",
    "VerbatimTask",
    "get_task",
    "load_trec",
    "trec_dir",
]

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        SniahTask(),
        OolongTask(),
        OolongPairsTask(),
        CodeQATask(),
        VerbatimTask(),
        MathTask(),
        ResearchTask(),
    )
}
"""Every task with its default settings, by registry name."""


def get_task(name: str) -> Task:
    """The task registered as ``name``; :class:`CtxfoldError` naming the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise CtxfoldError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}"
        ) from None
