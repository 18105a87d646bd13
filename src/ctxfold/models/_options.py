"""A model whose calls get default options (sampling for rollouts: temperature, seed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ctxfold.models._base import Completion, Message, Model, prepare_model


class WithOptions:
    """``model`` with ``options`` added to every call (a call's own options win). Closing it
    leaves ``model`` open: whoever made ``model`` closes it."""

    def __init__(self, model: Model, **options: Any) -> None:
        self.model = model
        self.options = options
        self.name = model.name
        self.context_window = model.context_window
        self.priced = getattr(model, "priced", False)

    def complete(self, messages: Sequence[Message], **options: Any) -> Completion:
        return self.model.complete(messages, **(self.options | options))

    async def acomplete(self, messages: Sequence[Message], **options: Any) -> Completion:
        return await self.model.acomplete(messages, **(self.options | options))

    def prepare(self) -> None:
        """Prepare the wrapped model, if it can be (``OpenAIModel.prepare``)."""
        prepare_model(self.model)

    def close(self) -> None:
        """Nothing: the wrapped model is its maker's to close."""
