"""A model that replays scripted replies: the test double for engines, brokers and user code."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ctxfold.errors import ModelError
from ctxfold.models._base import Completion, Message, TokenUsage
from ctxfold.models._tokens import count_message_tokens, count_tokens

__all__ = ["ScriptedModel"]

ReplyFunction = Callable[[list[Message]], str]


class ScriptedModel:
    """Replays ``replies`` in order, or answers with ``replies(messages)`` when it is a callable.

    An exception instance in the list is raised at its turn instead of a reply (handy to test error
    paths). When a list runs out the call raises :class:`~ctxfold.errors.ModelError`. Usage is
    counted locally (``estimated=True``). Safe to call from many threads; ``calls`` keeps a copy
    of every message list received, in call order.

    >>> model = ScriptedModel(["first", "second"])
    >>> model.complete([{"role": "user", "content": "hi"}]).text
    'first'
    """

    def __init__(
        self,
        replies: Sequence[str | BaseException] | ReplyFunction,
        *,
        name: str = "scripted",
        context_window: int | None = None,
    ) -> None:
        self.name = name
        self.context_window = context_window
        self.calls: list[list[Message]] = []
        self._lock = threading.Lock()
        self._function: ReplyFunction | None = None
        self._replies: list[str | BaseException] = []
        if callable(replies):
            self._function = replies
        elif isinstance(replies, str):
            raise TypeError("replies must be a list of strings or a function, not a single string")
        else:
            self._replies = list(replies)

    @property
    def remaining(self) -> int:
        """Scripted replies not used yet (0 for a reply function)."""
        with self._lock:
            return max(len(self._replies) - len(self.calls), 0) if self._function is None else 0

    def complete(self, messages: Sequence[Message], **options: Any) -> Completion:
        """Return the next scripted reply; ``options`` are accepted and ignored."""
        received = _copy(messages)
        with self._lock:
            index = len(self.calls)
            self.calls.append(received)
            if self._function is None:
                if index >= len(self._replies):
                    raise ModelError(f"ScriptedModel ran out of replies after {index} calls")
                reply = self._replies[index]
        if self._function is not None:
            reply = self._function(_copy(received))
        if isinstance(reply, BaseException):
            raise reply
        usage = TokenUsage(
            input_tokens=count_message_tokens(received),
            output_tokens=count_tokens(reply),
            estimated=True,
        )
        return Completion(text=reply, usage=usage, model=self.name, finish_reason="stop")

    async def acomplete(self, messages: Sequence[Message], **options: Any) -> Completion:
        """The async form of :meth:`complete` (it never waits)."""
        return self.complete(messages, **options)

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"ScriptedModel(name={self.name!r}, calls={len(self.calls)})"


def _copy(messages: Sequence[Message]) -> list[Message]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]
