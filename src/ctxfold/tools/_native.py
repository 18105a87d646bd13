"""Native tool calling: which models get it, and the tool specs and prompt note they are sent.

A model client that implements :class:`~ctxfold.models._base.ToolModel` (``OpenAIModel`` and
``AnthropicModel``) and has ``native_tools`` set gets the tools through its API's own fields
(``tools`` / ``tool_calls`` / ``tool`` messages, or ``tool_use`` / ``tool_result`` blocks).
Every other model (the local model, ``ScriptedModel``, a client with ``native_tools=False``)
keeps the text protocol of :mod:`ctxfold.tools._loop`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ctxfold.models import ToolModel
from ctxfold.tools._tool import Tool


def native_tool_model(model: object) -> ToolModel | None:
    """``model`` if the tool loop should use its native tool calls, else ``None``."""
    if isinstance(model, ToolModel) and getattr(model, "native_tools", False) is True:
        return model
    return None


def tool_specs(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The neutral ``{"name", "description", "parameters"}`` specs a :class:`ToolModel` takes."""
    return [
        {"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools
    ]


def native_system_text(max_turns: int) -> str:
    """The system-message note for a sub-LLM that calls tools natively."""
    return (
        f"You can call the tools you are given, up to {max_turns} times in all. "
        "When you are done, reply normally with your answer."
    )
