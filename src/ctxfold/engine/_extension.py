"""The one seam through which something outside the core changes a run's root conversation.

An :class:`Extension` may replace the root system prompt and the demonstration, add a set-up
cell to the REPL (run after the sandbox starts and after every worker restart), answer the
``tool`` requests that functions defined by that cell send over the worker's channel, and refuse
sub-LLM calls. The core knows nothing of what an extension does with them: the bench's CodeAct +
BM25 baseline (``ctxfold.bench.codeact``) is one. Without an extension, tools go to sub-LLMs
only.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ctxfold.models import Message

__all__ = ["Extension"]


@runtime_checkable
class Extension(Protocol):
    """Changes what one run's root model is told and what its code can call on the host."""

    #: why sub-LLM calls are refused in such a run (their slots get this error), or ``None``
    refuses_subcalls: str | None

    def setup_code(self) -> str | None:
        """A cell of the host's to run in the REPL at start and after every restart."""

    def system_prompt(self, profile: str, *, context_summary: str, output_limit: int) -> str | None:
        """The root system prompt to use instead of the profile's own, or ``None``."""

    def demonstration(self, profile: str) -> list[Message] | None:
        """Prior chat turns to show instead of the profile's own, or ``None``."""

    def call(self, name: str, arguments: Any) -> tuple[str, str | None, dict[str, Any]]:
        """Answer one ``tool`` request: ``(result, error or None, the arguments as shown in the
        trace)``. Never raises; ``name`` and ``arguments`` come from the sandbox, unchecked."""
