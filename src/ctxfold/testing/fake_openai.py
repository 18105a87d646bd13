"""A fake OpenAI-compatible chat server on 127.0.0.1, for tests and benchmarks.

It answers ``POST /v1/chat/completions`` (plain or ``stream: true``) and ``GET /v1/models``. Each
plain response goes out in a single socket write and Nagle's algorithm is off, so loopback timing
is not skewed by delayed ACKs (see NOTES-benchmarking.md).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ctxfold.closing import Closing

__all__ = ["FakeOpenAIServer", "Fault"]


@dataclass(frozen=True, slots=True)
class Fault:
    """A misbehaviour served for the next ``times`` chat requests, before normal answers resume.

    Kinds: an HTTP error status such as ``"429"``, ``"400"``, ``"500"`` or ``"503"`` (with a
    ``Retry-After`` header when ``retry_after`` is set: seconds or an HTTP date, sent as given),
    ``"stall"`` (wait ``seconds`` before answering normally; use it to trip a client timeout),
    ``"malformed"`` (status 200 with a body that is not JSON), ``"cutoff"`` (announce a body, send
    half of it and close the connection) and ``"empty"`` (a valid response with no ``choices``).
    """

    kind: str
    times: int = 1
    retry_after: float | str | None = None
    seconds: float = 2.0

    def __post_init__(self) -> None:
        is_status = len(self.kind) == 3 and self.kind.isdigit() and self.kind[0] in "45"
        if not is_status and self.kind not in _OTHER_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}: use an HTTP error status like '429' or "
                f"'500', or one of {', '.join(map(repr, _OTHER_KINDS))}"
            )
        if self.times < 1:
            raise ValueError("a fault must happen at least once (times >= 1)")


_OTHER_KINDS = ("stall", "malformed", "cutoff", "empty")


Reply = Callable[[list[dict[str, Any]]], str | dict[str, Any]] | str


class FakeOpenAIServer(Closing):
    """An OpenAI-compatible HTTP server in a daemon thread, bound to a free port on 127.0.0.1.

    Args:
        reply: the assistant text, or a function of the request's ``messages`` returning it. The
            function may also return ``{"tool_calls": [{"name": ..., "arguments": {...}}]}``
            (optionally with ``"content"`` text, and an ``"id"`` per call) to answer with a
            native tool call (``finish_reason`` ``"tool_calls"``; not for streamed requests).
        latency: seconds to wait before each chat answer (the wait is concurrent across requests).
        faults: misbehaviours consumed in order by the first chat requests.
        include_usage: send a ``usage`` block (word counts) with each answer.
        usage_cost: if set, add ``usage.cost`` (dollars) the way OpenRouter does.

    Use it as a context manager, or call :meth:`close`. ``requests`` holds every chat request body
    received (faulted ones included); ``max_in_flight`` the most chat requests handled at once;
    ``request_tools`` the ``tools`` field of each chat request (``None`` when it had none).
    """

    def __init__(
        self,
        reply: Reply = "ok",
        *,
        latency: float = 0.0,
        faults: Sequence[Fault] | None = None,
        include_usage: bool = True,
        usage_cost: float | None = None,
    ) -> None:
        self.reply = reply
        self.latency = latency
        self.include_usage = include_usage
        self.usage_cost = usage_cost
        self.requests: list[dict[str, Any]] = []
        self.request_tools: list[Any] = []
        self.max_in_flight = 0
        self._faults = deque(f for f in faults or () for _ in range(f.times))
        self._in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url`` of this server, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def in_flight(self) -> int:
        """Chat requests being handled right now."""
        return self._in_flight

    def reset_stats(self) -> None:
        """Forget received requests and the in-flight maximum."""
        with self._lock:
            self.requests.clear()
            self.request_tools.clear()
            self.max_in_flight = self._in_flight

    def close(self) -> None:
        """Stop serving, drop open connections and join the server thread. Safe to call twice."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
        self._httpd.shutdown()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        self._thread.join()

    # -- used by the handler ---------------------------------------------------------------

    def _begin(self, body: dict[str, Any]) -> Fault | None:
        with self._lock:
            self.requests.append(body)
            self.request_tools.append(body.get("tools"))
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            return self._faults.popleft() if self._faults else None

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _answer_text(self, messages: list[dict[str, Any]]) -> str | dict[str, Any]:
        return self.reply(messages) if callable(self.reply) else self.reply

    def _usage(self, messages: list[dict[str, Any]], text: str) -> dict[str, Any]:
        prompt = sum(len(str(m.get("content") or "").split()) for m in messages)
        completion = len(text.split())
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if self.usage_cost is not None:
            usage["cost"] = self.usage_cost
        return usage


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True
    owner: FakeOpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up (timeouts, cut-offs); report anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        owner = self.server.owner
        with owner._lock:  # close() takes the same lock: a connection is either seen or refused
            closing = owner._closing.is_set()
            if not closing:
                owner._sockets.add(self.connection)
        if closing:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        owner = self.server.owner
        with owner._lock:
            owner._sockets.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and benchmarks do not want access logs."""

    # -- routes ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            data = [{"id": "fake", "object": "model", "created": 0, "owned_by": "ctxfold"}]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_error(404, "not found")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_error(404, "not found")
            return
        try:
            body = json.loads(raw)
            messages = list(body["messages"])
        except (ValueError, KeyError, TypeError):
            self._send_error(400, "request body must be JSON with a 'messages' list")
            return
        owner = self.server.owner
        fault = owner._begin(body)
        try:
            if owner.latency > 0:
                owner._closing.wait(owner.latency)
            if fault is not None and self._serve_fault(fault):
                return
            try:
                answer = owner._answer_text(messages)
            except Exception as exc:  # a broken reply function: tell the client, keep serving
                self._send_error(500, f"reply function failed: {exc!r}")
                return
            text = answer if isinstance(answer, str) else str(answer.get("content") or "")
            if body.get("stream"):
                self._send_stream(body, messages, text)
            elif isinstance(answer, dict) and answer.get("tool_calls"):
                self._send_json(200, self._tool_completion(body, messages, answer))
            else:
                self._send_json(200, self._completion(body, messages, text))
        finally:
            owner._end()

    # -- responses -------------------------------------------------------------------------

    def _serve_fault(self, fault: Fault) -> bool:
        """Serve ``fault``; return False when a normal answer should still follow (a stall)."""
        kind = fault.kind
        if kind == "stall":
            self.server.owner._closing.wait(fault.seconds)
            return False
        if kind == "malformed":
            self._send_raw(200, b'{"id": "chatcmpl-broken", "choices": [{"mess', "application/json")
        elif kind == "cutoff":
            body = json.dumps({"id": "chatcmpl-cut", "choices": [], "padding": "x" * 200}).encode()
            head = self._head(200, "application/json", len(body))
            self.wfile.write(head + body[: len(body) // 2])
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif kind == "empty":
            self._send_json(
                200, {"id": "chatcmpl-empty", "object": "chat.completion", "choices": []}
            )
        else:
            extra = {}
            if fault.retry_after is not None:
                extra["Retry-After"] = str(fault.retry_after)
            self._send_error(int(kind), f"fault injected: {kind}", extra)
        return True

    def _completion(
        self, body: dict[str, Any], messages: list[dict[str, Any]], text: str
    ) -> dict[str, Any]:
        owner = self.server.owner
        out: dict[str, Any] = {
            "id": f"chatcmpl-fake-{len(owner.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
        }
        if owner.include_usage:
            out["usage"] = owner._usage(messages, text)
        return out

    def _tool_completion(
        self, body: dict[str, Any], messages: list[dict[str, Any]], answer: dict[str, Any]
    ) -> dict[str, Any]:
        """A completion whose message carries native ``tool_calls`` (arguments as JSON text)."""
        out = self._completion(body, messages, str(answer.get("content") or ""))
        n = len(self.server.owner.requests)
        calls = [
            {
                "id": call.get("id") or f"call_{n}_{i}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": call["arguments"]
                    if isinstance(call.get("arguments"), str)
                    else json.dumps(call.get("arguments") or {}),
                },
            }
            for i, call in enumerate(answer["tool_calls"])
        ]
        choice = out["choices"][0]
        choice["message"] = {
            "role": "assistant",
            "content": answer.get("content"),
            "tool_calls": calls,
        }
        choice["finish_reason"] = "tool_calls"
        return out

    def _send_stream(self, body: dict[str, Any], messages: list[dict[str, Any]], text: str) -> None:
        owner = self.server.owner
        base = {
            "id": f"chatcmpl-fake-{len(owner.requests)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
        }
        pieces = [w + " " for w in text.split(" ")]
        pieces[-1] = pieces[-1][:-1]
        events: list[dict[str, Any]] = [
            {
                **base,
                "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
            }
        ]
        events += [
            {**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
            for p in pieces
            if p
        ]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        stream_options = body.get("stream_options") or {}
        if owner.include_usage and stream_options.get("include_usage"):
            events.append({**base, "choices": [], "usage": owner._usage(messages, text)})
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        self.wfile.write(head)
        for payload in [*(json.dumps(e) for e in events), "[DONE]"]:
            data = f"data: {payload}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")

    def _send_error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        if status >= 500:
            kind = "server_error"
        payload = {"error": {"message": message, "type": kind, "code": str(status)}}
        self._send_json(status, payload, headers)

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_raw(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.wfile.write(self._head(status, content_type, len(body), headers) + body)

    def _head(
        self, status: int, content_type: str, length: int, headers: dict[str, str] | None = None
    ) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Content-Type: {content_type}",
            f"Content-Length: {length}",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
