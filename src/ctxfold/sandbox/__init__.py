"""Sandboxes: where model-written code runs. See :class:`Sandbox` for the seam."""

from __future__ import annotations

from ctxfold.errors import CtxfoldError, SandboxError
from ctxfold.plugins import SANDBOX_GROUP, find_plugin, plugin_names
from ctxfold.sandbox._base import (
    AnswerState,
    CellResult,
    ContextSpec,
    Sandbox,
    SourceSpan,
    SubcallHandler,
    SubcallItem,
    SubcallRequest,
)
from ctxfold.sandbox._cleanup import remove_soon
from ctxfold.sandbox._isolation import IsolationWarning
from ctxfold.sandbox._repl import WorkerSandbox
from ctxfold.sandbox._setup import SetupSandbox
from ctxfold.sandbox._spare import SparePool, WarmHold, keep_warm, settle_spares, stop_spares
from ctxfold.sandbox._tempdirs import host_temp_dir
from ctxfold.sandbox.docker import DockerSandbox
from ctxfold.sandbox.process import ProcessSandbox

__all__ = [
    "AnswerState",
    "CellResult",
    "ContextSpec",
    "DockerSandbox",
    "IsolationWarning",
    "ProcessSandbox",
    "Sandbox",
    "SetupSandbox",
    "SourceSpan",
    "SparePool",
    "SubcallHandler",
    "SubcallItem",
    "SubcallRequest",
    "WarmHold",
    "WorkerSandbox",
    "host_temp_dir",
    "keep_warm",
    "make_sandbox",
    "remove_soon",
    "settle_spares",
    "stop_spares",
]


_METHODS = ("start", "setup", "execute", "close")


def make_sandbox(spec: str | Sandbox) -> Sandbox:
    """The sandbox for ``spec``.

    A name is a backend found as a plugin (entry point group ``ctxfold.sandboxes``, see
    :mod:`ctxfold.plugins`): the built-in ``"process"`` gives a :class:`ProcessSandbox` (best
    isolation available), ``"docker"`` a :class:`DockerSandbox` (:class:`SandboxError` when no
    Docker engine answers). An object with ``start``/``setup``/``execute``/``close`` is returned
    as it is.
    Anything else raises :class:`SandboxError`, naming the installed backends.
    """
    if isinstance(spec, str):
        try:
            factory = find_plugin(SANDBOX_GROUP, spec, "sandbox")
        except SandboxError:
            raise
        except CtxfoldError as exc:
            raise SandboxError(str(exc)) from None
        sandbox: Sandbox = factory()
        return sandbox
    if all(callable(getattr(spec, method, None)) for method in _METHODS):
        return spec
    names = ", ".join(plugin_names(SANDBOX_GROUP, fresh=True))
    raise SandboxError(
        f"sandbox must be a name ({names}) or an object with "
        f"{'/'.join(_METHODS)}, got {type(spec).__name__}"
    )
