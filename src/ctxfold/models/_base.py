"""The one small protocol every model client implements, and the values it returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, runtime_checkable


class Message(TypedDict):
    """One chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens of one call. ``estimated`` is true when the server gave no usage and we counted."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False
    cost_usd: float | None = None

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Completion:
    """What a model call returns: the text, its usage, and the model name that produced it."""

    text: str
    usage: TokenUsage
    model: str
    finish_reason: str | None = None


@runtime_checkable
class Model(Protocol):
    """A chat model. ``name`` labels it in usage and traces.

    ``options`` a client understands: ``max_tokens``, ``temperature``, ``stop`` (list of strings),
    ``timeout`` (seconds). Unknown options are ignored by clients that do not support them.
    ``context_window`` is the model's window in tokens, or ``None`` when unknown.
    """

    name: str
    context_window: int | None

    def complete(self, messages: Sequence[Message], **options: Any) -> Completion: ...

    async def acomplete(self, messages: Sequence[Message], **options: Any) -> Completion: ...

    def close(self) -> None: ...
