"""``ctxfold mcp``: an RLM as an MCP tool for coding agents (the official ``mcp`` SDK).

The one tool, ``ask(question, paths)``, answers a question over files and folders under the
server's root, so an agent can ask about a huge log or code base without reading it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from ctxfold.errors import CtxfoldError
from ctxfold.result import Result
from ctxfold.rlm import RLM
from ctxfold.serve._progress import progress_feed
from ctxfold.trace import Trace

__all__ = ["create_mcp_server", "paths_under"]

_INSTRUCTIONS = (
    "ask(question, paths) answers a question about files or folders (a huge log, a code base) "
    "with a Recursive Language Model that reads them for you: your context stays small. Give "
    "paths relative to the server's root."
)


def paths_under(root: Path, paths: list[str]) -> list[Path]:
    """``paths`` resolved against ``root``; raises :class:`CtxfoldError` for an empty list, a
    path that does not exist, or one outside ``root`` (symbolic links are followed first)."""
    if not paths:
        raise CtxfoldError("give at least one file or folder in paths")
    base = root.resolve()
    out = []
    for given in paths:
        path = (base / given).resolve()
        if not path.is_relative_to(base):
            raise CtxfoldError(f"{given!r} is outside the server's root ({base})")
        if not path.exists():
            raise CtxfoldError(f"{given!r} does not exist under the server's root")
        out.append(path)
    return out


def create_mcp_server(rlm: RLM, root: Path) -> MCPServer:
    """An MCP server (run it with ``.run("stdio")``) whose ``ask`` tool runs ``rlm`` over files
    under ``root``; ``rlm`` is closed when the server stops."""

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(rlm.close)

    server: MCPServer = MCPServer("ctxfold", instructions=_INSTRUCTIONS, lifespan=lifespan)

    @server.tool()
    async def ask(question: str, paths: list[str], ctx: Context) -> str:
        """Answer a question about the files or folders at `paths` (relative to the server's
        root) without loading them into your context. Returns the answer, then its sources."""
        try:
            inputs = paths_under(root, paths)
        except CtxfoldError as exc:
            raise ToolError(str(exc)) from None
        result = await _run_with_progress(rlm, question, inputs, ctx)
        return _answer_text(result)

    return server


async def _run_with_progress(rlm: RLM, question: str, inputs: list[Path], ctx: Context) -> Result:
    """Run ``rlm``, relaying its progress notes to the client as progress notifications."""
    notes, listen = progress_feed()

    trace = Trace()
    trace.subscribe(listen)

    async def relay() -> None:
        sent = 0
        while True:
            note = await notes.get()
            sent += 1
            with contextlib.suppress(Exception):  # a client that asked for no progress
                await ctx.report_progress(sent, None, note)

    relaying = asyncio.ensure_future(relay())
    try:
        if len(inputs) == 1:
            return await rlm.arun(question, inputs[0], trace=trace)
        return await rlm.arun(question, contexts=inputs, trace=trace)
    except CtxfoldError as exc:
        raise ToolError(str(exc)) from None
    finally:
        relaying.cancel()


def _answer_text(result: Result) -> str:
    text = result.answer or "(no answer)"
    if not result.ready:
        text += f"\n\n(not final: the run stopped on its {result.stop_reason} limit)"
    if result.citations:
        lines = [f"- {c.where}: {c.quote[:200]!r}" for c in result.citations]
        text += "\n\nSources:\n" + "\n".join(lines)
    return text
