"""Turn a model spec string (``"local"``, ``"openai:gpt-5-mini"``...) into a model client."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from ctxfold.errors import CtxfoldError, ModelSpecError
from ctxfold.models._base import Model
from ctxfold.plugins import MODEL_GROUP, find_plugin, has_plugin, plugin_names

__all__ = ["foreign_endpoint", "resolve_model", "split_url"]

# Where each hosted provider sends requests when a spec names no URL: the user's configuration.
_CONFIGURED = {
    "openai": ("OPENAI_BASE_URL", "https://api.openai.com/v1"),
    "anthropic": ("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
}

_FORMS = (
    "use 'local', 'local:NAME', 'openai:NAME', 'openai:NAME@http://host:port/v1', "
    "'anthropic:NAME', or a Model object"
)


def resolve_model(spec: str | Model) -> Model:
    """Return the model a spec names; a :class:`~ctxfold.models.Model` object is returned as is.

    The part before the first ``:`` (or ``?``) names a provider found as a plugin (see
    :mod:`ctxfold.plugins`); the built-in ones accept:

    - ``"local"`` or ``"local:NAME"``: the embedded offline model
      (:func:`ctxfold.models.local.load_local_model`), optionally with ``?window=TOKENS``;
    - ``"openai:NAME"``: the OpenAI API (needs ``OPENAI_API_KEY``, honours ``OPENAI_BASE_URL``);
    - ``"openai:NAME@http://host:port/v1"``: any OpenAI-compatible server;
    - ``"anthropic:NAME"``: Anthropic's API (needs ``ANTHROPIC_API_KEY``); an ``@URL`` suffix
      sets its base URL.

    Raises:
        ModelSpecError: the spec is not one of these forms or names no model.
        MissingAPIKeyError: a hosted API was named and its key is not set.
    """
    if not isinstance(spec, str):
        if isinstance(spec, Model):
            return spec
        raise ModelSpecError(f"unknown model spec {spec!r}: {_FORMS}")
    text = spec.strip()
    head, colon, rest = text.partition(":")
    provider, query, tail = head.partition("?")
    if colon and not rest.strip():
        raise ModelSpecError(f"model spec {spec!r} has no name after '{head}:': {_FORMS}")
    if not has_plugin(MODEL_GROUP, provider):
        installed = ", ".join(plugin_names(MODEL_GROUP))
        raise ModelSpecError(
            f"unknown model spec {spec!r}: {_FORMS} (installed providers: {installed})"
        )
    try:
        factory = find_plugin(MODEL_GROUP, provider, "model provider")
    except CtxfoldError as exc:  # installed but broken
        raise ModelSpecError(str(exc)) from None
    model: Model = factory(rest if colon else f"?{tail}" if query else "")
    return model


def split_url(spec: str, rest: str) -> tuple[str, str | None]:
    """``"NAME@URL"`` → ``(NAME, URL)``, ``"NAME"`` → ``(NAME, None)``, for the hosted
    providers' specs; :class:`ModelSpecError` (naming ``spec``) when either part is bad."""
    return _split_url(spec, rest)


def foreign_endpoint(spec: str) -> str | None:
    """The endpoint (``scheme://host:port``) a spec sends requests to when that is not where the
    user's own configuration sends them (``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``, or the
    provider's API); ``None`` for a spec that follows the configuration or calls no server
    (``local``). Clients send the user's API key with every request, so a spec from an untrusted
    source (a trace, a request body) is checked with this before it is used."""
    provider, colon, rest = spec.strip().partition(":")
    provider = provider.lower()
    if not colon or provider not in _CONFIGURED:
        return None
    _, at, url = rest.partition("@")
    if not at:
        return None
    variable, default = _CONFIGURED[provider]
    configured = os.environ.get(variable) or default
    wanted, ours = _origin(url.strip()), _origin(configured)
    return None if wanted == ours else wanted


def _origin(url: str) -> str:
    """``scheme://host:port`` of a URL (the port made explicit), lower-cased."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return url
    host = (parts.hostname or "").lower()
    return f"{parts.scheme.lower()}://{host}:{port}"


def _split_url(spec: str, rest: str) -> tuple[str, str | None]:
    """``"NAME@URL"`` → ``(NAME, URL)``; ``"NAME"`` → ``(NAME, None)``."""
    name, at, url = rest.partition("@")
    name, url = name.strip(), url.strip()
    if not name:
        raise ModelSpecError(f"model spec {spec!r} has no model name: {_FORMS}")
    if not at:
        return name, None
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:  # e.g. "http://[" (a broken IPv6 address)
        raise ModelSpecError(f"model spec {spec!r}: bad base URL after '@' ({exc})") from None
    if any(not c.isprintable() or c.isspace() for c in url):
        raise ModelSpecError(
            f"model spec {spec!r}: the base URL after '@' has a space or control character"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelSpecError(
            f"model spec {spec!r}: the base URL after '@' must start with http:// or https:// "
            "(e.g. 'openai:NAME@http://127.0.0.1:8000/v1')"
        )
    return name, url
