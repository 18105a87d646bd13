"""Plugins: model providers and sandbox backends found through Python entry points.

A package adds a model provider by declaring, in its ``pyproject.toml``::

    [project.entry-points."ctxfold.models"]
    echo = "my_package.models:make_echo"

after which ``ctxfold.RLM("echo:NAME")`` calls ``make_echo("NAME")`` (the spec after
``echo:``, or ``""`` for a bare ``"echo"``; a ``?query`` right after the name is kept, as in
``"local?window=8192"``) and uses the :class:`~ctxfold.models.Model` it returns. Sandbox
backends likewise, in the group ``ctxfold.sandboxes``: ``sandbox="NAME"`` calls the factory with
no arguments and uses the :class:`~ctxfold.sandbox.Sandbox` it returns. ctxfold's own providers
(``local``, ``openai``, ``anthropic``) and backends (``process``, ``docker``) register the same
way: the core has no list of them.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ctxfold.errors import CtxfoldError

__all__ = ["MODEL_GROUP", "SANDBOX_GROUP", "find_plugin", "plugin_names"]

MODEL_GROUP = "ctxfold.models"
SANDBOX_GROUP = "ctxfold.sandboxes"


def _installed(group: str) -> dict[str, EntryPoint]:
    return {ep.name.lower(): ep for ep in entry_points(group=group)}


def plugin_names(group: str) -> list[str]:
    """The names registered in ``group``, sorted."""
    return sorted(_installed(group))


def find_plugin(group: str, name: str, what: str) -> Callable[..., Any]:
    """The factory registered as ``name`` in ``group``; a one-line :class:`CtxfoldError` naming
    the installed ones when there is none (``what`` says what was asked for, e.g. "model
    provider"), or when it cannot be loaded."""
    found = _installed(group)
    entry = found.get(name.strip().lower())
    if entry is None:
        known = ", ".join(sorted(found)) or "none (is ctxfold installed? pip install -e .)"
        raise CtxfoldError(f"unknown {what} {name!r}; installed: {known}")
    try:
        factory: Callable[..., Any] = entry.load()
    except Exception as exc:  # a broken third-party package must not crash the caller
        raise CtxfoldError(
            f"the {what} {name!r} ({entry.value}) could not be loaded: {type(exc).__name__}: {exc}"
        ) from None
    return factory
