"""``ctxfold view``: traces in the browser. Needs the ``serve`` extra (Starlette, uvicorn)."""

from ctxfold.view._index import NotATrace, TraceIndex, check_trace
from ctxfold.view.app import create_view_app

__all__ = ["NotATrace", "TraceIndex", "check_trace", "create_view_app"]
