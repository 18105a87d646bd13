"""Set-up cells: ctxfold's own code that must be in the REPL before the model's code runs.

:class:`SetupSandbox` wraps a sandbox. Its set-up cells (``question = ...``, the code tools'
functions) run in order when it starts and again whenever a fresh worker replaces a dead one (a
cell whose result says ``restarted``), through :meth:`Sandbox.setup`: they are not traced, and not
numbered, so the model's first cell is ``<cell 1>`` in its tracebacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ctxfold.errors import CtxfoldError, SandboxError
from ctxfold.sandbox._base import CellResult, ContextSpec, Sandbox, SubcallHandler


@dataclass(frozen=True, slots=True)
class _SetupCell:
    code: str
    what: str  # what it defines, for error messages: "the tools", "the question"
    timeout: float | None


class SetupSandbox:
    """A sandbox whose set-up cells run after ``start`` and after every worker restart; the
    model's cells run in the wrapped sandbox as they are."""

    def __init__(self, inner: Sandbox) -> None:
        self._inner = inner
        self._cells: list[_SetupCell] = []
        self.isolation: str = getattr(inner, "isolation", "")

    def add(self, code: str, *, what: str, timeout: float | None) -> None:
        """Add a set-up cell (before :meth:`start`); ``what`` names what it defines. A cell
        that defines the same ``what`` as an earlier one replaces it."""
        cell = _SetupCell(code, what, timeout)
        for i, old in enumerate(self._cells):
            if old.what == what:
                self._cells[i] = cell
                return
        self._cells.append(cell)

    def define(self, code: str, *, what: str, timeout: float | None) -> str | None:
        """Add (or replace) a set-up cell on a started sandbox and run it now; its error text,
        if it failed (``what`` is then undefined until it is defined again)."""
        self.add(code, what=what, timeout=timeout)
        result = self._inner.setup(code, timeout=timeout)
        return result.error

    def start(
        self, contexts: Sequence[ContextSpec], handler: SubcallHandler, *, output_limit: int = 8000
    ) -> None:
        """Start the wrapped sandbox and run the set-up cells.

        Raises:
            CtxfoldError: a set-up cell failed.
        """
        self._inner.start(contexts, handler, output_limit=output_limit)
        failed = self._set_up()
        if failed:
            cell, error = failed[0]
            raise CtxfoldError(f"could not define {cell.what} in the sandbox: {error[-300:]}")

    def execute(self, code: str, *, timeout: float | None = None) -> CellResult:
        cell = self._inner.execute(code, timeout=timeout)
        if cell.restarted:  # a fresh worker: set it up again
            for failed, error in self._set_up():
                cell.stderr += f"\n[ctxfold] {failed.what} could not be defined again: {error}"
        return cell

    def setup(self, code: str, *, timeout: float | None = None) -> CellResult:
        return self._inner.setup(code, timeout=timeout)

    def add_input(self, spec: ContextSpec) -> None:
        """Load one more input into the running sandbox, if its backend can.

        Raises:
            SandboxError: it cannot, or loading failed.
        """
        add = getattr(self._inner, "add_input", None)
        if add is None:
            raise SandboxError(f"this sandbox ({self.isolation}) cannot take inputs once started")
        add(spec)

    def close(self) -> None:
        self._inner.close()

    def _set_up(self) -> list[tuple[_SetupCell, str]]:
        """Run the set-up cells in order; those that failed, with their errors."""
        failed = []
        for cell in self._cells:
            result = self._inner.setup(cell.code, timeout=cell.timeout)
            if result.error:
                failed.append((cell, result.error))
        return failed
