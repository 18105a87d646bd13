"""``ctxfold view [TRACE.jsonl | DIR]``: traces in the browser, live while they are written."""

from __future__ import annotations

import argparse
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Any

from ctxfold.cli._common import serve_extra
from ctxfold.errors import CtxfoldError


def register(verbs: Any) -> None:
    view = verbs.add_parser("view", help="show a trace (or a folder of them) in the browser")
    view.add_argument("path", nargs="?", default=".", help="a trace file or a folder (default: .)")
    view.add_argument("--port", type=int, default=0, help="the port (default: a free one)")
    view.add_argument("--no-browser", action="store_true", help="print the address only")
    view.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    viewer = start_viewer(Path(args.path), port=args.port)
    print(f"ctxfold view: {viewer.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    if not args.no_browser:
        webbrowser.open(viewer.url)
    viewer.wait()
    return 0


class Viewer:
    """A viewer served by uvicorn in a daemon thread (``url``; ``wait()`` until Ctrl-C)."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        sock = server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}/"

    def wait(self) -> None:
        """Until Ctrl-C (or the server stops)."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            self.stop()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def start_viewer(path: Path, *, port: int = 0) -> Viewer:
    """Serve the viewer of ``path`` on 127.0.0.1 and return once it listens; one-line
    :class:`~ctxfold.errors.CtxfoldError` for a missing path or a file that is not a trace."""
    serve_extra()
    import uvicorn

    from ctxfold.view import create_view_app

    app = create_view_app(path)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    # In a thread of its own, uvicorn leaves the signals (Ctrl-C) to the main thread.
    thread = threading.Thread(target=server.run, name="ctxfold-view", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise CtxfoldError(f"the viewer could not listen on 127.0.0.1:{port}")
        thread.join(0.02)
    return Viewer(server, thread)
