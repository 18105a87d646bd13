"""Errors raised by ctxfold. Every error a user can cause is a :class:`CtxfoldError`."""

from __future__ import annotations

import os


class CtxfoldError(Exception):
    """Base class of every error ctxfold raises on purpose; its message is one readable line."""


class ModelSpecError(CtxfoldError, ValueError):
    """A model spec string could not be understood (e.g. ``"gpt:foo"``)."""


class MissingAPIKeyError(CtxfoldError):
    """A hosted model was asked for but its API key is not set."""


class ModelError(CtxfoldError):
    """A model call failed after its retries were spent."""


class ContextError(CtxfoldError, ValueError):
    """The input given as ``context`` cannot be used (missing, unreadable, binary as text...)."""


class SandboxError(CtxfoldError):
    """The sandbox could not be started or stopped working in a way the run cannot survive."""


class BudgetError(CtxfoldError, ValueError):
    """A :class:`ctxfold.Budget` was built with nonsense values."""


class LocalModelError(CtxfoldError):
    """The embedded local model is not installed, fails its checksum, or could not start."""


class UntrustedSpecError(CtxfoldError):
    """A trace asks for a model endpoint other than the user's configuration (resume refuses it
    unless the user names the model or trusts the trace)."""


def quoted(path: str | os.PathLike[str]) -> str:
    """A path as error messages show it: quoted, with control characters escaped (a newline in a
    file name must not forge a second error line)."""
    return repr(os.fspath(path))
