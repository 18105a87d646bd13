"""ctxfold: Recursive Language Models (Zhang et al., arXiv:2512.24601).

A root model answers a question about an input far larger than its window by writing Python that
runs in a sandboxed REPL holding the input, and by delegating reading to sub-LLM calls.

    >>> import ctxfold
    >>> rlm = ctxfold.RLM(model="local")
    >>> result = rlm.run("Which user placed order 7731?", context=Path("orders.log"))
"""

from ctxfold import models, tools
from ctxfold.budget import Budget
from ctxfold.errors import (
    BudgetError,
    ContextError,
    CtxfoldError,
    LocalModelError,
    MissingAPIKeyError,
    ModelError,
    ModelSpecError,
    SandboxError,
    UntrustedSpecError,
)
from ctxfold.rlm import RLM, Result, __version__
from ctxfold.trace import Trace
from ctxfold.usage import CallStats, Usage

__all__ = [
    "RLM",
    "Budget",
    "BudgetError",
    "CallStats",
    "ContextError",
    "CtxfoldError",
    "LocalModelError",
    "MissingAPIKeyError",
    "ModelError",
    "ModelSpecError",
    "Result",
    "SandboxError",
    "Trace",
    "UntrustedSpecError",
    "Usage",
    "__version__",
    "models",
    "tools",
]
