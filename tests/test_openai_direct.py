"""The direct HTTP/1.1 path of the OpenAI-compatible client (plain http, no proxy).

A scripted raw-socket server sends exact bytes, so framing the generic HTTP client would handle
for us (chunks, gzip, interim answers, closing, cut-offs) is checked here; the fault and e2e
suites cover the rest against FakeOpenAIServer.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
from collections.abc import Callable, Iterator

import openai
import pytest

from ctxfold.errors import ModelError
from ctxfold.models import OpenAIModel, RetryPolicy
from ctxfold.models._http import DirectHTTP

_NO_RETRY = RetryPolicy(max_attempts=1)
_BODY = json.dumps(
    {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
).encode()

Responder = Callable[[bytes], bytes | None]  # the request -> the bytes to send (None: hang up)


class RawServer:
    """Accepts connections on 127.0.0.1 and answers each request with ``respond(request)``;
    records requests and how many connections were opened."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.requests: list[bytes] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                request = head + reader.read(length)
                self.requests.append(request)
                answer = self.respond(request)
                if answer is None:
                    conn.close()
                    return
                conn.sendall(answer)
        except OSError:
            return

    def drop_idle(self) -> None:
        """Close every server-side connection (as a keep-alive timeout does)."""
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self._listener.close()
        self.drop_idle()


@pytest.fixture
def serve() -> Iterator[Callable[[Responder], RawServer]]:
    servers: list[RawServer] = []

    def start(respond: Responder) -> RawServer:
        servers.append(RawServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _ok(body: bytes = _BODY, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", *extra]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in extra):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _model(server: RawServer, **options: object) -> OpenAIModel:
    return OpenAIModel("m", base_url=server.base_url, retry=_NO_RETRY, **options)  # type: ignore[arg-type]


def _ask(model: OpenAIModel) -> str:
    return model.complete([{"role": "user", "content": "hello"}]).text


def test_one_write_keeps_the_connection_and_sends_the_sdk_headers(serve) -> None:
    server = serve(lambda request: _ok())
    model = _model(server, api_key="sk-direct")
    assert model._clients.sync().direct is not None
    assert [_ask(model) for _ in range(3)] == ["hi"] * 3
    assert server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["authorization"] == "Bearer sk-direct"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("OpenAI/Python")
    assert headers["accept-encoding"] == "identity"
    assert json.loads(body)["messages"] == [{"role": "user", "content": "hello"}]
    model.close()


def test_chunked_gzip_and_interim_answers_are_read(serve) -> None:
    packed = gzip.compress(_BODY)
    chunks = (
        b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (packed[:10], packed[10:])) + b"0\r\n\r\n"
    )
    answers = iter(
        [
            b"HTTP/1.1 100 Continue\r\n\r\n"
            + _ok(chunks, "Transfer-Encoding: chunked", "Content-Encoding: gzip"),
            _ok(_BODY, "Connection: close"),
            _ok(),
        ]
    )
    server = serve(lambda request: next(answers))
    model = _model(server)
    assert [_ask(model) for _ in range(3)] == ["hi"] * 3
    assert server.connections == 2  # "Connection: close" was honoured


def test_a_connection_the_server_closed_while_idle_is_not_used(serve) -> None:
    server = serve(lambda request: _ok())
    model = _model(server)
    assert _ask(model) == "hi"
    server.drop_idle()
    assert _ask(model) == "hi"  # with no retries allowed: the stale socket was never written to
    assert server.connections == 2


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param(lambda request: None, openai.APIConnectionError, id="hang-up"),
        pytest.param(
            lambda request: _ok()[:-10], openai.APIConnectionError, id="cut-off"
        ),  # the server then waits: the short body must not be taken as whole
        pytest.param(lambda request: b"garbage\r\n\r\n", openai.APIConnectionError, id="garbage"),
    ],
)
def test_transport_failures_are_the_sdks_errors(serve, answer: Responder, error: type) -> None:
    server = serve(answer)
    model = _model(server, timeout=1.0)
    with pytest.raises(ModelError) as caught:
        _ask(model)
    assert isinstance(caught.value.__cause__, error)


def test_error_statuses_come_back_as_the_sdks_status_errors(serve) -> None:
    body = json.dumps({"error": {"message": "nope", "type": "invalid_request_error"}}).encode()
    server = serve(
        lambda request: (
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    )
    with pytest.raises(ModelError, match="nope") as caught:
        _ask(_model(server))
    cause = caught.value.__cause__
    assert isinstance(cause, openai.APIStatusError) and cause.status_code == 400


def test_the_http_client_is_used_with_a_proxy_or_odd_headers(
    serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(lambda request: _ok())
    assert _model(server, api_key="bad\r\nX-Injected: 1")._clients.sync().direct is None
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert _model(server)._clients.sync().direct is None
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.setenv("all_proxy", "http://127.0.0.1:9")
    assert _model(server)._clients.sync().direct is None


def test_https_uses_the_http_client() -> None:
    import httpx2

    https = httpx2.URL("https://api.example.com/v1/chat/completions")
    assert DirectHTTP.for_url(https, {}, max_idle=1) is None
    plain = httpx2.URL("http://[::1]:8000/v1/chat/completions")
    direct = DirectHTTP.for_url(plain, {"A": "b"}, max_idle=1)
    assert direct is not None and direct._head.startswith(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: [::1]:8000\r\nA: b\r\n"
    )
