"""The root loop and what one run's engines share.

``_loop.py`` holds :class:`Engine` (start the sandbox, ask the root model, run its code, report
back, stop when ``answer["ready"]`` or a budget ends); ``_run.py`` the state shared by the
engines of one run (:class:`RunShared`, :class:`EngineOptions`); ``_resume.py`` rebuilding a
killed run from its trace; ``_extension.py`` the one seam for changing the root conversation;
``_code.py`` finding the code blocks of a reply. What the root model is told is the business of
its prompt profile (``ctxfold.prompts.Profile``).
"""

from __future__ import annotations

# RunShared first: the broker, imported by the loop, takes it from this package.
from ctxfold.engine._run import EngineOptions, RunShared  # isort: skip
from ctxfold.engine._code import extract_code
from ctxfold.engine._extension import Extension
from ctxfold.engine._loop import Engine, Outcome
from ctxfold.engine._resume import (
    AskedRecord,
    ReplayHandler,
    ResumeState,
    TurnRecord,
    load_resume_state,
)
from ctxfold.engine._workspace import Workspace

__all__ = [
    "AskedRecord",
    "Engine",
    "EngineOptions",
    "Extension",
    "Outcome",
    "ReplayHandler",
    "ResumeState",
    "RunShared",
    "TurnRecord",
    "Workspace",
    "extract_code",
    "load_resume_state",
]
