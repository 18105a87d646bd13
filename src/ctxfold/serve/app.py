"""``ctxfold serve``: an RLM behind the OpenAI chat-completions API (Starlette on uvicorn).

``GET /v1/models`` lists the served ids (``ctxfold`` and any aliases); ``POST
/v1/chat/completions`` answers the last user message over the earlier messages (or the
``context`` extra field), plainly or streamed as Server-Sent Events with progress chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ctxfold.budget import Budget
from ctxfold.errors import CtxfoldError
from ctxfold.result import Result
from ctxfold.rlm import RLM
from ctxfold.serve._chat import (
    ApiError,
    ChatRequest,
    chunk,
    completion_body,
    completion_id,
    finish_reason,
    parse_chat_request,
    run_figures,
    sse,
    usage_block,
)
from ctxfold.serve._progress import progress_feed
from ctxfold.trace import Event, Trace

__all__ = ["SERVED_ID", "ServeConfig", "create_app"]

SERVED_ID = "ctxfold"  # the model id of the main RLM


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """How the server admits and bounds requests.

    ``api_keys``: bearer keys a request must carry (none: no auth). ``max_concurrent`` runs at
    once, ``max_queue`` more may wait for a slot; past that a request gets 429 with
    ``Retry-After``. ``max_body_bytes``: larger bodies get 413. ``cap``: the server's budget,
    the default of every run and the most a request's ``budget`` may ask. ``trace_dir``: each
    run's JSONL trace is written there, named by its completion id.
    """

    api_keys: tuple[str, ...] = ()
    max_concurrent: int = 4
    max_queue: int = 64
    max_body_bytes: int = 32 * 1024 * 1024
    cap: Budget = field(default_factory=Budget)
    trace_dir: Path | None = None


class _Busy(Exception):
    """Every run slot is taken and the queue is full."""


class _Gate:
    """At most ``slots`` runs at once and ``queue`` waiting; the rest are refused at once."""

    def __init__(self, slots: int, queue: int) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._queue = queue
        self.waiting = 0
        self.running = 0
        self._seconds = 1.0  # a running mean of run times, for Retry-After

    def check(self) -> None:
        """Raise :class:`_Busy` if a request coming now would be refused."""
        if self._slots.locked() and self.waiting >= self._queue:
            raise _Busy

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.check()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
            self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - started)

    def retry_after(self) -> int:
        return max(1, math.ceil(self._seconds))


def create_app(rlms: Mapping[str, RLM], config: ServeConfig | None = None) -> Starlette:
    """The ASGI app serving ``rlms`` (model id -> RLM; the ids ``GET /v1/models`` lists).

    The RLMs are closed when the app shuts down (uvicorn does this on SIGTERM, once running
    requests finish or its grace period ends and they are cancelled, closing their sandboxes).
    """
    if not rlms:
        raise CtxfoldError("create_app needs at least one RLM to serve")
    server = _Server(dict(rlms), config or ServeConfig())

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for rlm in server.rlms.values():
                await asyncio.to_thread(rlm.close)

    routes = [
        Route("/v1/models", server.guarded(server.models), methods=["GET"]),
        Route("/v1/chat/completions", server.guarded(server.chat), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


Handler = Callable[[Request], Awaitable[Response]]


class _Server:
    def __init__(self, rlms: dict[str, RLM], config: ServeConfig) -> None:
        self.rlms = rlms
        self.config = config
        self.gate = _Gate(config.max_concurrent, config.max_queue)
        self.created = int(time.time())

    def guarded(self, handler: Handler) -> Handler:
        """``handler`` behind the key check, with refusals as OpenAI-style error responses."""

        async def endpoint(request: Request) -> Response:
            try:
                self._authorize(request)
                return await handler(request)
            except ApiError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)
            except _Busy:
                error = _busy_error()
                headers = {"Retry-After": str(self.gate.retry_after())}
                return JSONResponse(error.body(), status_code=429, headers=headers)
            except Exception as exc:  # a bug, not the request's fault: say so, keep serving
                error = ApiError(500, f"the run failed: {exc}", code="server_error")
                return JSONResponse(error.body(), status_code=500)

        return endpoint

    def _authorize(self, request: Request) -> None:
        keys = self.config.api_keys
        if not keys:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not any(hmac.compare_digest(token.encode(), key.encode()) for key in keys):
            raise ApiError(401, "a valid API key is required", code="invalid_api_key")

    async def models(self, request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": self.created, "owned_by": "ctxfold"}
            for name in self.rlms
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        raw = await self._body(request)
        chat = parse_chat_request(raw, cap=self.config.cap)
        rlm = self.rlms.get(chat.model)
        if rlm is None:
            known = ", ".join(self.rlms)
            raise ApiError(
                404,
                f"the model {chat.model!r} does not exist here (served: {known})",
                code="model_not_found",
                param="model",
            )
        if chat.stream:
            return await self._stream(request, rlm, chat)
        async with self.gate.slot():
            result = await _until_disconnect(request, self._run(rlm, chat, completion_id()))
        if result is None:  # the client left; its run was cancelled
            return Response(status_code=499)
        cid, done = result
        return JSONResponse(completion_body(cid, chat.model, done))

    async def _body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the body is over this server's limit of {limit:,} bytes")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise ApiError(413, f"the body is over this server's limit of {limit:,} bytes")
        return bytes(body)

    async def _run(
        self,
        rlm: RLM,
        chat: ChatRequest,
        cid: str,
        listener: Callable[[Event], None] | None = None,
    ) -> tuple[str, Result]:
        path = None if self.config.trace_dir is None else self.config.trace_dir / f"{cid}.jsonl"
        trace = Trace(path)
        if listener is not None:
            trace.subscribe(listener)
        try:
            result = await rlm.arun(
                chat.question, chat.context, trace=trace, schema=chat.schema, budget=chat.budget
            )
        except CtxfoldError as exc:
            raise ApiError(400, str(exc)) from None
        return cid, result

    async def _stream(self, request: Request, rlm: RLM, chat: ChatRequest) -> Response:
        self.gate.check()  # refuses (429) before the response starts
        return StreamingResponse(
            self._chunks(rlm, chat, completion_id()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _chunks(self, rlm: RLM, chat: ChatRequest, cid: str) -> AsyncIterator[bytes]:
        """The SSE body: a role chunk, progress chunks, the answer, a final chunk, [DONE]."""
        yield sse(chunk(cid, chat.model, {"role": "assistant", "content": ""}))
        try:
            async with self.gate.slot():
                async for event in self._streamed_run(rlm, chat, cid):
                    yield event
        except _Busy:
            yield sse(_busy_error().body())
        yield sse("[DONE]")

    async def _streamed_run(self, rlm: RLM, chat: ChatRequest, cid: str) -> AsyncIterator[bytes]:
        notes, listen = progress_feed()

        run = asyncio.ensure_future(self._run(rlm, chat, cid, listen))
        model = chat.model
        try:
            while not run.done() or not notes.empty():
                waiter = asyncio.ensure_future(notes.get())
                await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    waiter.cancel()
                    continue
                note = waiter.result()
                delta = {"reasoning_content": note + "\n"}
                yield sse(chunk(cid, model, delta, extra={"ctxfold": {"progress": note}}))
            try:
                _, result = run.result()
            except ApiError as exc:
                yield sse(exc.body())
                return
            except Exception as exc:
                yield sse(ApiError(500, f"the run failed: {exc}", code="server_error").body())
                return
            yield sse(chunk(cid, model, {"content": result.answer}))
            figures = {"ctxfold": run_figures(result)}
            yield sse(chunk(cid, model, {}, finish=finish_reason(result), extra=figures))
            if chat.include_usage:
                yield sse(chunk(cid, model, {}) | {"choices": [], "usage": usage_block(result)})
        finally:
            # The client may have left: cancel the run and wait until its sandbox is closed.
            with anyio.CancelScope(shield=True):
                await _cancel_and_wait(run)


def _busy_error() -> ApiError:
    return ApiError(429, "the server is busy: every run slot is taken", code="rate_limit_exceeded")


async def _until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """``await work``, unless the client disconnects first: then ``work`` is cancelled (and
    awaited, so that its run has stopped) and ``None`` returned."""
    task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if task.done():
        return task.result()
    await _cancel_and_wait(task)
    return None


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _cancel_and_wait(task: asyncio.Future[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        await task
