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

The installed entry points are read once per process and group (a scan of every installed
distribution takes milliseconds, and an ``RLM`` looks up three plugins); a name not found
triggers one fresh scan, so a plugin installed while the process runs is still found.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ctxfold.errors import CtxfoldError

__all__ = ["MODEL_GROUP", "SANDBOX_GROUP", "find_plugin", "has_plugin", "plugin_names"]

MODEL_GROUP = "ctxfold.models"
SANDBOX_GROUP = "ctxfold.sandboxes"


_found: dict[str, dict[str, EntryPoint]] = {}  # group -> its entry points, by lower-case name


def _installed(group: str, *, fresh: bool = False) -> dict[str, EntryPoint]:
    found = None if fresh else _found.get(group)
    if found is None:
        found = {ep.name.lower(): ep for ep in entry_points(group=group)}
        _found[group] = found
    return found


def plugin_names(group: str, *, fresh: bool = False) -> list[str]:
    """The names registered in ``group``, sorted; ``fresh`` reads them again from the installed
    distributions instead of this process's copy."""
    return sorted(_installed(group, fresh=fresh))


def _entry(group: str, key: str) -> EntryPoint | None:
    """The entry point named ``key`` (lower case) in ``group``, read again from the installed
    distributions when this process's copy lacks it (installed since the last look?)."""
    return _installed(group).get(key) or _installed(group, fresh=True).get(key)


def has_plugin(group: str, name: str) -> bool:
    """Whether ``name`` is registered in ``group`` (ignoring case)."""
    return _entry(group, name.lower()) is not None


def find_plugin(group: str, name: str, what: str) -> Callable[..., Any]:
    """The factory registered as ``name`` in ``group``; a one-line :class:`CtxfoldError` naming
    the installed ones when there is none (``what`` says what was asked for, e.g. "model
    provider"), or when it cannot be loaded."""
    entry = _entry(group, name.strip().lower())
    if entry is None:
        known = ", ".join(plugin_names(group)) or "none (is ctxfold installed? pip install -e .)"
        raise CtxfoldError(f"unknown {what} {name!r}; installed: {known}")
    try:
        factory: Callable[..., Any] = entry.load()
    except Exception as exc:  # a broken third-party package must not crash the caller
        raise CtxfoldError(
            f"the {what} {name!r} ({entry.value}) could not be loaded: {type(exc).__name__}: {exc}"
        ) from None
    return factory
