"""ctxfold: Recursive Language Models (Zhang et al., arXiv:2512.24601).

A root model answers a question about an input far larger than its window by writing Python that
runs in a sandboxed REPL holding the input, and by delegating reading to sub-LLM calls.

    >>> import ctxfold
    >>> rlm = ctxfold.RLM(model="local")
    >>> result = rlm.run("Which user placed order 7731?", context=Path("orders.log"))
"""

from ctxfold import models, tools
from ctxfold.budget import Budget
from ctxfold.citations import Citation
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
from ctxfold.result import Result
from ctxfold.rlm import RLM, __version__
from ctxfold.session import Session
from ctxfold.trace import Trace
from ctxfold.usage import CallStats, Usage

__all__ = [
    "RLM",
    "Budget",
    "BudgetError",
    "CallStats",
    "Citation",
    "ContextError",
    "CtxfoldError",
    "LocalModelError",
    "MissingAPIKeyError",
    "ModelError",
    "ModelSpecError",
    "Result",
    "SandboxError",
    "Session",
    "Trace",
    "UntrustedSpecError",
    "Usage",
    "__version__",
    "models",
    "tools",
]
