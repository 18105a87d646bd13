"""Model clients: one small protocol, several backends, and a spec parser.

Importing this package is cheap: the ``openai`` and ``anthropic`` SDKs load on a client's first
call, and the embedded local model only when a ``"local"`` spec is resolved.
"""

from ctxfold.models._base import (
    Completion,
    Message,
    Model,
    TokenUsage,
    ToolCompletion,
    ToolModel,
    prepare_model,
)
from ctxfold.models._options import WithOptions
from ctxfold.models._prices import table_price, warn_if_unpriced
from ctxfold.models._retry import RetryPolicy
from ctxfold.models._spec import foreign_endpoint, resolve_model
from ctxfold.models._tokens import CHARS_PER_TOKEN, count_message_tokens, count_tokens
from ctxfold.models.anthropic_model import AnthropicModel
from ctxfold.models.openai_compat import OpenAIModel
from ctxfold.models.scripted import ScriptedModel

__all__ = [
    "CHARS_PER_TOKEN",
    "AnthropicModel",
    "Completion",
    "Message",
    "Model",
    "OpenAIModel",
    "RetryPolicy",
    "ScriptedModel",
    "TokenUsage",
    "ToolCompletion",
    "ToolModel",
    "WithOptions",
    "count_message_tokens",
    "count_tokens",
    "foreign_endpoint",
    "prepare_model",
    "resolve_model",
    "table_price",
    "warn_if_unpriced",
]
