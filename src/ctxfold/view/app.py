"""``ctxfold view``: a local web page that shows traces (Starlette; the page is static HTML,
CSS and JS shipped in this package, with no build step and nothing fetched from elsewhere).

Serves one trace file or a folder of them (a bench ``--out`` folder: its results table and
plots too). The page asks for summaries first and for each turn's or sub-call's details when
it is opened, and polls while a run is still being written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ctxfold.bench import load_rows
from ctxfold.errors import CtxfoldError
from ctxfold.view._index import (
    NotATrace,
    TraceIndex,
    check_trace,
    root_prompt,
    subcall_details,
    subcall_rows,
    trace_overview,
    trace_summary,
    turn_details,
)

__all__ = ["create_view_app"]

_STATIC = Path(__file__).parent / "static"
# The page runs only its own script and styles: nothing a trace holds can run as code.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_MAX_ROWS = 500


class _Problem(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_view_app(target: Path) -> Starlette:
    """The viewer of ``target``, a trace file or a folder; raises :class:`CtxfoldError` (one
    line) if it does not exist or is a file that is not a trace."""
    if not target.exists():
        raise CtxfoldError(f"no such file or folder: {target}")
    if target.is_file():
        try:
            check_trace(target)
        except OSError as exc:
            raise CtxfoldError(f"cannot read {target}: {exc.strerror}") from None
    viewer = _Viewer(target.resolve())
    routes = [
        Route("/", viewer.page),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/target", viewer.api(viewer.describe)),
        Route("/api/folder", viewer.api(viewer.folder)),
        Route("/api/trace", viewer.api(viewer.trace)),
        Route("/api/turn", viewer.api(viewer.turn)),
        Route("/api/prompt", viewer.api(viewer.prompt)),
        Route("/api/subcalls", viewer.api(viewer.subcalls)),
        Route("/api/subcall", viewer.api(viewer.subcall)),
        Route("/files/{name:path}", viewer.plot),
        Mount("/static", app=StaticFiles(directory=_STATIC), name="static"),
    ]
    return Starlette(routes=routes)


class _Viewer:
    def __init__(self, target: Path) -> None:
        self.target = target
        self.root = target if target.is_dir() else target.parent
        self._indexes: dict[Path, TraceIndex] = {}

    # -- plumbing ------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return FileResponse(_STATIC / "index.html", headers=_HEADERS)

    def api(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                body = handler(request)
            except _Problem as exc:
                return JSONResponse({"error": exc.message}, exc.status, headers=_HEADERS)
            return JSONResponse(body, headers=_HEADERS)

        return endpoint

    def _file(self, request: Request) -> Path:
        """The trace a request names: the served file, or a ``.jsonl`` under the folder."""
        if self.target.is_file():
            return self.target
        name = request.query_params.get("file", "")
        path = (self.root / name).resolve()
        if not name or path.suffix != ".jsonl" or not path.is_relative_to(self.root):
            raise _Problem(400, f"not a trace of this folder: {name!r}")
        if not path.is_file():
            raise _Problem(404, f"no such trace: {name!r}")
        return path

    def _index(self, request: Request) -> TraceIndex:
        path = self._file(request)
        index = self._indexes.setdefault(path, TraceIndex(path))
        try:
            index.refresh()
        except NotATrace as exc:
            raise _Problem(422, str(exc)) from None
        except OSError as exc:
            raise _Problem(404, f"cannot read {path.name}: {exc.strerror}") from None
        return index

    @staticmethod
    def _int(request: Request, name: str, default: int | None = None) -> int:
        value = request.query_params.get(name)
        if value is None and default is not None:
            return default
        try:
            return int(value or "")
        except ValueError:
            raise _Problem(400, f"{name} must be a whole number") from None

    # -- endpoints -----------------------------------------------------------------------------

    def describe(self, request: Request) -> dict[str, Any]:
        kind = "trace" if self.target.is_file() else "folder"
        return {"kind": kind, "name": self.target.name, "path": str(self.target)}

    def trace(self, request: Request) -> dict[str, Any]:
        return trace_summary(self._index(request))

    def turn(self, request: Request) -> dict[str, Any]:
        found = turn_details(
            self._index(request), self._int(request, "run"), self._int(request, "turn")
        )
        if found is None:
            raise _Problem(404, "no such turn")
        return found

    def prompt(self, request: Request) -> dict[str, Any]:
        found = root_prompt(self._index(request), self._int(request, "run"))
        if found is None:
            raise _Problem(404, "no such run")
        return {"messages": found}

    def subcalls(self, request: Request) -> dict[str, Any]:
        limit = min(self._int(request, "limit", 100), _MAX_ROWS)
        rows = subcall_rows(
            self._index(request), self._int(request, "run"), self._int(request, "offset", 0), limit
        )
        return {"rows": rows}

    def subcall(self, request: Request) -> dict[str, Any]:
        found = subcall_details(
            self._index(request), self._int(request, "run"), self._int(request, "id")
        )
        if found is None:
            raise _Problem(404, "no such sub-call")
        return found

    def folder(self, request: Request) -> dict[str, Any]:
        """A bench folder's results rows and plots, and a row per trace file."""
        if self.target.is_file():
            raise _Problem(400, "the viewer serves one trace, not a folder")
        results = self.root / "results.jsonl"
        bench = _bench_rows(results) if results.is_file() else None
        plots = sorted(p.name for p in self.root.glob("*.png"))
        files = sorted(
            p
            for p in [*self.root.glob("*.jsonl"), *self.root.glob("*/*.jsonl")]
            if p.name != "results.jsonl"
        )
        return {"bench": bench, "plots": plots, "traces": [self._trace_row(p) for p in files]}

    def _trace_row(self, path: Path) -> dict[str, Any]:
        name = str(path.relative_to(self.root))
        index = self._indexes.setdefault(path, TraceIndex(path))
        try:
            index.refresh()
        except (NotATrace, OSError) as exc:
            return {"file": name, "problem": str(exc)}
        runs = trace_overview(index)
        if not runs:
            return {"file": name, "problem": "no run yet"}
        first, last = runs[0], runs[-1]
        return {
            "file": name,
            "question": first["question"],
            "model": first["model"],
            "runs": len(runs),
            "answer": last["answer"][:200],
            "stop_reason": last["stop_reason"],
            "tokens": last["tokens"],
            "cost_usd": last["cost_usd"],
            "seconds": sum(r["seconds"] or 0 for r in runs),
        }

    async def plot(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = (self.root / name).resolve()
        if path.suffix != ".png" or not path.is_relative_to(self.root) or not path.is_file():
            return JSONResponse({"error": "no such plot"}, 404, headers=_HEADERS)
        return FileResponse(path, headers=_HEADERS)


def _bench_rows(path: Path) -> list[dict[str, Any]]:
    keep = ("task", "instance", "method", "score", "cost_usd", "wall_s", "error", "trace")
    counted = ("root_input_tokens", "root_output_tokens", "sub_input_tokens", "sub_output_tokens")
    return [
        {k: row.get(k) for k in keep} | {"tokens": sum(int(row.get(k) or 0) for k in counted)}
        for row in load_rows(path)
    ]
