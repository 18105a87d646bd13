"""``ctxfold bench``: long-context tasks, methods side by side, reports, scaffold performance."""

from ctxfold.bench._types import Instance, Task
from ctxfold.bench.methods import METHODS, MethodResult
from ctxfold.bench.report import markdown, plots, summarise
from ctxfold.bench.runner import BenchSpec, load_rows, run_bench, run_one

__all__ = [
    "METHODS",
    "BenchSpec",
    "Instance",
    "MethodResult",
    "Task",
    "load_rows",
    "markdown",
    "plots",
    "run_bench",
    "run_one",
    "summarise",
]
