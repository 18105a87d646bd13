"""The REPL a run (or a whole session) works in: a sandbox with ctxfold's set-up cells, started
in the background, whose sub-calls go to whichever question is being answered now."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ctxfold.context import PreparedContext
from ctxfold.errors import CtxfoldError
from ctxfold.sandbox import Sandbox, SetupSandbox, SubcallHandler, SubcallRequest


class _Starting:
    """A start-up step running on a helper thread; :meth:`wait` re-raises its error."""

    def __init__(self, step: Callable[[], None]) -> None:
        self._step = step
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ctxfold-sandbox-start", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._step()
        except BaseException as exc:  # handed to the engine's thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Block until the step is done; raise its error (once) if it failed."""
        while self._thread.is_alive():  # in slices: Ctrl-C taken by another thread is seen
            self._thread.join(0.25)
        error, self._error = self._error, None
        if error is not None:
            raise error

    def join(self) -> None:
        """Block until the step is done, raising nothing."""
        self._thread.join()


class Workspace:
    """A sandbox, its set-up cells, and the handler its sub-calls go to (:meth:`route`)."""

    def __init__(self, sandbox: Sandbox, *, cell_seconds: float | None) -> None:
        self.sandbox = SetupSandbox(sandbox)
        self.isolation: str = getattr(sandbox, "isolation", "")
        self._cell_seconds = cell_seconds
        self._handler: SubcallHandler | None = None
        self._starting: _Starting | None = None

    def start(
        self,
        contexts: Sequence[PreparedContext],
        *,
        output_limit: int,
        setup: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Start the sandbox in the background with ``setup`` cells (``(code, what)`` pairs,
        run again after every worker restart); :meth:`ready` waits for it."""
        for code, what in setup:
            self.sandbox.add(code, what=what, timeout=self._cell_seconds)
        specs = [c.spec for c in contexts]
        self._starting = _Starting(
            lambda: self.sandbox.start(specs, self._handle, output_limit=output_limit)
        )

    def ready(self) -> SetupSandbox:
        """The started sandbox (waits for the start; raises what it raised)."""
        if self._starting is None:
            raise CtxfoldError("the workspace was not started")
        self._starting.wait()
        return self.sandbox

    def route(self, handler: SubcallHandler | None) -> None:
        """Send the sandbox's sub-calls to ``handler`` from now on (``None``: refuse them)."""
        self._handler = handler

    def define(self, name: str, value: Any, *, what: str = "") -> None:
        """Set the REPL variable ``name`` to JSON data ``value``, now and after every restart.

        Raises:
            CtxfoldError: the sandbox could not define it.
        """
        code = f"import json as _json\n{name} = _json.loads({json.dumps(value)!r})\ndel _json"
        error = self.ready().define(code, what=what or name, timeout=self._cell_seconds)
        if error:
            raise CtxfoldError(f"could not define {name} in the sandbox: {error[-300:]}")

    def close(self) -> None:
        """Wait for a start under way, then close the sandbox (idempotent)."""
        if self._starting is not None:
            self._starting.join()
        self.sandbox.close()

    def _handle(self, request: SubcallRequest) -> list[str] | dict[str, Any]:
        handler = self._handler
        if handler is None:
            if request.kind == "budget":
                return {}
            return ["[error: no question is being answered]"] * len(request.items)
        return handler(request)
