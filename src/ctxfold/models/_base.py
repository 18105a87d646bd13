"""The one small protocol every model client implements, and the values it returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    cache_hit: bool = False  # served by a response cache: not billed, spends no budget

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def billed(self) -> int:
        """The tokens this call spends of a budget (none for a cache hit)."""
        return 0 if self.cache_hit else self.total

    def __add__(self, other: TokenUsage) -> TokenUsage:
        """The usage of two calls together (estimated if either was; cost unknown if both are)."""
        costs = [c for c in (self.cost_usd, other.cost_usd) if c is not None]
        return TokenUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            estimated=self.estimated or other.estimated,
            cost_usd=sum(costs) if costs else None,
            cache_hit=self.cache_hit and other.cache_hit,
        )


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
    ``timeout`` (seconds per attempt), ``deadline`` (a ``time.monotonic()`` value by which the
    whole call, retries included, must end: the engine passes the run's ``Budget.seconds`` this
    way), ``choices`` (list of strings: a client that can constrain decoding makes the reply
    exactly one of them; callers still check the reply), ``cache_prefix`` (how many leading
    messages stay the same from call to call: a client whose provider caches prompts marks
    them, as the Anthropic client does). Unknown options are ignored by clients that do not
    support them.
    ``context_window`` is the model's window in tokens, or ``None`` when unknown.
    """

    name: str
    context_window: int | None

    def complete(self, messages: Sequence[Message], **options: Any) -> Completion: ...

    async def acomplete(self, messages: Sequence[Message], **options: Any) -> Completion: ...

    def close(self) -> None: ...


def prepare_model(model: Model) -> None:
    """Have ``model`` load what it would load on its first call (a hosted client's SDK), if it
    has a ``prepare()`` method; other models need nothing."""
    prepare = getattr(model, "prepare", None)
    if callable(prepare):
        prepare()


# -- native tool calling: an optional capability, apart from the Model protocol ----------------


@dataclass(frozen=True, slots=True)
class NativeToolCall:
    """One tool call a model asked for in its own tool-calling format.

    ``error`` is set (and ``arguments`` empty) when the model sent arguments that are not a JSON
    object; the loop reports it back to the model instead of running the tool.
    """

    id: str
    name: str
    arguments: dict[str, Any]
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCompletion:
    """What :meth:`ToolModel.complete_with_tools` (and its async twin) returns: a
    :class:`Completion`'s fields and the tool calls of the reply (empty when the model answered
    without calling a tool)."""

    text: str
    usage: TokenUsage
    model: str
    finish_reason: str | None = None
    tool_calls: tuple[NativeToolCall, ...] = ()


@runtime_checkable
class ToolModel(Protocol):
    """A model client that can call tools natively (optional; :class:`Model` does not need it).

    ``tools`` are ``{"name", "description", "parameters"}`` dicts (``parameters`` a JSON schema).
    ``messages`` are :class:`Message` dicts plus two kinds the tool loop adds:
    ``{"role": "assistant", "content": str, "tool_calls": [{"id", "name", "arguments"}]}`` and
    ``{"role": "tool", "tool_call_id": str, "name": str, "content": str, "is_error": bool}``.
    ``native_tools`` false makes the tool loop use its text protocol instead.
    ``acomplete_with_tools`` is the async twin, used by the async tool loop.
    """

    native_tools: bool

    def complete_with_tools(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        **options: Any,
    ) -> ToolCompletion: ...

    async def acomplete_with_tools(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        **options: Any,
    ) -> ToolCompletion: ...
