"""The built-in model providers, registered as plugins (entry point group ``ctxfold.models``,
see :mod:`ctxfold.plugins`) like any third-party one. Each takes the part of a spec after its
prefix and imports its client only when called."""

from __future__ import annotations

from ctxfold.models._base import Model
from ctxfold.models._spec import split_url

__all__ = ["anthropic", "local", "openai"]


def local(rest: str) -> Model:
    """``local``: ``""``, ``"NAME"`` or ``"/path/model.gguf"``, each optionally with
    ``?window=TOKENS&parallel=SLOTS`` (a bare ``"?..."`` for the default model)."""
    from ctxfold.models.local import load_local_model  # heavy, rarely needed

    return load_local_model("local" + (rest if not rest or rest.startswith("?") else f":{rest}"))


def openai(rest: str) -> Model:
    """``openai``: ``"NAME"`` (the OpenAI API) or ``"NAME@http://host:port/v1"``."""
    from ctxfold.models.openai_compat import OpenAIModel

    name, base_url = split_url(f"openai:{rest}", rest)
    return OpenAIModel(name, base_url=base_url)


def anthropic(rest: str) -> Model:
    """``anthropic``: ``"NAME"`` (Anthropic's API) or ``"NAME@URL"``."""
    from ctxfold.models.anthropic_model import AnthropicModel

    name, base_url = split_url(f"anthropic:{rest}", rest)
    return AnthropicModel(name, base_url=base_url)
