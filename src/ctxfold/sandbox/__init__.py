"""Sandboxes: where model-written code runs. See :class:`Sandbox` for the seam."""

from __future__ import annotations

from ctxfold.errors import SandboxError
from ctxfold.sandbox._base import (
    AnswerState,
    CellResult,
    ContextSpec,
    Sandbox,
    SubcallHandler,
    SubcallItem,
    SubcallRequest,
)
from ctxfold.sandbox._isolation import IsolationWarning
from ctxfold.sandbox._spare import SparePool, WarmHold, keep_warm, stop_spares
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
    "SparePool",
    "SubcallHandler",
    "SubcallItem",
    "SubcallRequest",
    "WarmHold",
    "host_temp_dir",
    "keep_warm",
    "make_sandbox",
    "stop_spares",
]

_NAMES = ("process", "docker")


def make_sandbox(spec: str | Sandbox) -> Sandbox:
    """The sandbox for ``spec``.

    ``"process"`` gives a :class:`ProcessSandbox` (best isolation available); ``"docker"`` a
    :class:`DockerSandbox` (:class:`SandboxError` when no Docker engine answers); an object with
    ``start``/``execute``/``close`` is returned as it is. Anything else raises
    :class:`SandboxError`.
    """
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name == "process":
            return ProcessSandbox()
        if name == "docker":
            return DockerSandbox()
        raise SandboxError(
            f"unknown sandbox {spec!r}: use one of {', '.join(_NAMES)}, or a Sandbox object"
        )
    if all(callable(getattr(spec, method, None)) for method in ("start", "execute", "close")):
        return spec
    raise SandboxError(
        f"sandbox must be one of {', '.join(_NAMES)} or an object with start/execute/close, "
        f"got {type(spec).__name__}"
    )
