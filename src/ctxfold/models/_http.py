"""A minimal keep-alive HTTP/1.1 client for POSTs to one plain-``http://`` endpoint.

It exists for speed: a call through the ``openai`` SDK's HTTP client (``httpx2``) and its generic
machinery costs about 0.85 ms on loopback, this path about 0.25 ms (one ``sendall`` of a pre-built
request on a kept-alive socket, and a small response reader); measured in
``benchmarks/results/perf.md``. :class:`~ctxfold.models.openai_compat.OpenAIModel` uses it for sync
calls to servers reached without TLS or a proxy (a local vLLM, llama.cpp, Ollama...). Transport
failures are raised as ``httpx2`` exceptions, which the caller maps to the SDK's own error types,
so errors and retries are the same as through the SDK.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import threading
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ctxfold.models._bounded import (
    MAX_RESPONSE_BYTES,
    OVER_LIMIT,
    ResponseTooLarge,
    check_length,
    decode_body,
)

if TYPE_CHECKING:
    import httpx2

__all__ = ["DirectHTTP", "Header"]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name
_VALUE = re.compile(r"[\t\x20-\x7e]*")  # a header value we send (no CR, LF or controls)
_MAX_LINE = 65536
_MAX_HEADERS = 256
Header = tuple[str, str]  # a response header: name, value


class DirectHTTP:
    """Keep-alive HTTP/1.1 POSTs to one plain-``http://`` endpoint, sent and read without the
    HTTP client's generic machinery. Used only where that changes nothing: no TLS, no proxy, no
    redirects to follow (a chat POST), no content encoding asked for.

    Connections are made as needed (as many as there are callers at once) and idle ones are
    kept (up to ``max_idle``); one that the server closed while idle is dropped on checkout.
    Transport failures are raised as ``httpx2`` exceptions (``ConnectError``, ``ReadTimeout``,
    ``RemoteProtocolError``...), which the caller maps exactly as the HTTP client's own.
    """

    def __init__(self, host: str, port: int, head: bytes, *, max_idle: int) -> None:
        self._address = (host, port)
        self._head = head  # the request line and fixed headers, up to "Content-Length: "
        self._max_idle = max_idle
        self._idle: list[tuple[socket.socket, Any]] = []
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def for_url(
        cls, url: httpx2.URL, headers: Mapping[str, str], *, max_idle: int
    ) -> DirectHTTP | None:
        """A direct path to ``url``, keeping up to ``max_idle`` idle connections; ``None`` when
        the HTTP client must be used (TLS, a proxy in the environment, headers that are not plain
        ASCII)."""
        if url.scheme != "http" or url.userinfo or not url.host:
            return None
        if any(k.lower() in ("http_proxy", "all_proxy") and v for k, v in os.environ.items()):
            return None
        if not all(_TOKEN.fullmatch(k) and _VALUE.fullmatch(v) for k, v in headers.items()):
            return None
        host = url.raw_host.decode("ascii")
        port = url.port or 80
        authority = f"[{host}]" if ":" in host else host
        fixed = {k.lower(): (k, v) for k, v in headers.items()}
        for name in (
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "accept-encoding",
        ):
            fixed.pop(name, None)
        fixed.setdefault("content-type", ("Content-Type", "application/json"))
        lines = [
            f"POST {url.raw_path.decode('ascii')} HTTP/1.1",
            f"Host: {authority}" + (f":{url.port}" if url.port else ""),
            *(f"{k}: {v}" for k, v in fixed.values()),
            "Accept-Encoding: identity",
            "Content-Length: ",
        ]
        return cls(host, port, "\r\n".join(lines).encode("ascii"), max_idle=max_idle)

    def post(self, payload: bytes, timeout: float) -> tuple[int, list[Header], bytes]:
        """Send one POST; its status, headers and (decoded) body."""
        import httpx2  # loaded with the SDK

        sock, reader = self._checkout(timeout)
        keep = False
        try:
            sock.settimeout(timeout)
            try:
                sock.sendall(b"%s%d\r\n\r\n%s" % (self._head, len(payload), payload))
            except TimeoutError as exc:
                raise httpx2.WriteTimeout(str(exc) or "timed out writing the request") from exc
            except OSError as exc:
                raise httpx2.WriteError(str(exc) or type(exc).__name__) from exc
            try:
                status, headers, body, keep = _read_response(reader)
            except TimeoutError as exc:
                raise httpx2.ReadTimeout(str(exc) or "timed out reading the response") from exc
            except ResponseTooLarge:
                raise  # not a transport failure: the call fails without retries
            except (OSError, ValueError, zlib.error) as exc:
                raise httpx2.RemoteProtocolError(str(exc) or type(exc).__name__) from exc
        finally:
            self._checkin(sock, reader, keep)
        return status, headers, body

    def _checkout(self, timeout: float) -> tuple[socket.socket, Any]:
        import httpx2  # loaded with the SDK

        while True:
            with self._lock:
                if not self._idle:
                    break
                sock, reader = self._idle.pop()
            if _still_open(sock):
                return sock, reader
            _shut(sock, reader)
        try:
            sock = socket.create_connection(self._address, timeout=timeout)
        except TimeoutError as exc:
            raise httpx2.ConnectTimeout(str(exc) or "timed out connecting") from exc
        except OSError as exc:
            raise httpx2.ConnectError(str(exc) or type(exc).__name__) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, sock.makefile("rb", buffering=1 << 16)

    def _checkin(self, sock: socket.socket, reader: Any, keep: bool) -> None:
        if keep:
            with self._lock:
                if not self._closed and len(self._idle) < self._max_idle:
                    self._idle.append((sock, reader))
                    return
        _shut(sock, reader)

    def close(self) -> None:
        """Close the idle connections; ones in use close when their call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock, reader in idle:
            _shut(sock, reader)


def _still_open(sock: socket.socket) -> bool:
    """Whether an idle keep-alive socket is still usable: readable now means the server closed
    it (or sent something unasked), either way it is not."""
    try:
        return not select.select([sock], [], [], 0)[0]
    except (OSError, ValueError):
        return False


def _shut(sock: socket.socket, reader: Any) -> None:
    with contextlib.suppress(OSError):
        reader.close()
    with contextlib.suppress(OSError):
        sock.close()


def _read_response(reader: Any) -> tuple[int, list[Header], bytes, bool]:
    """One HTTP/1.x response from ``reader``: status, headers, body, and whether the connection
    may be kept. Raises ``ValueError`` on a malformed answer, ``ConnectionError`` on a cut one."""
    while True:
        line = reader.readline(_MAX_LINE)
        if not line:
            raise ConnectionError("the server closed the connection without answering")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ValueError(f"not an HTTP/1.x status line: {line[:80]!r}")
        headers = _read_headers(reader)
        status = int(code)
        if status >= 200 or status == 101:
            break  # 1xx interim answers (100 Continue) are skipped
    fields: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    tokens = {t.strip().lower() for t in fields.get("connection", "").split(",")}
    keep = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
    if status in (204, 304):
        body = b""
    elif "chunked" in fields.get("transfer-encoding", "").lower():
        body = _read_chunked(reader)
    elif "content-length" in fields:
        length = int(fields["content-length"].split(",")[0].strip())
        if length < 0:
            raise ValueError("a negative Content-Length")
        check_length(fields["content-length"])
        body = reader.read(length)
        if len(body) < length:
            raise ConnectionError(
                f"the server closed the connection after {len(body)} of {length} body bytes"
            )
    else:  # the body runs to the end of the connection
        body = reader.read(MAX_RESPONSE_BYTES + 1)
        if len(body) > MAX_RESPONSE_BYTES:
            raise ResponseTooLarge(OVER_LIMIT)
        keep = False
    return status, headers, decode_body(body, fields.get("content-encoding", "")), keep


def _read_headers(reader: Any) -> list[Header]:
    headers: list[Header] = []
    while True:
        line = reader.readline(_MAX_LINE)
        if not line:
            raise ConnectionError("the server closed the connection in the middle of the headers")
        if line in (b"\r\n", b"\n"):
            return headers
        if len(headers) >= _MAX_HEADERS or not line.endswith(b"\n"):
            raise ValueError("response headers too long")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise ValueError(f"a malformed header line: {line[:80]!r}")
        headers.append((name, value.strip()))


def _read_chunked(reader: Any) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = reader.readline(_MAX_LINE)
        if not line:
            raise ConnectionError("the server closed the connection in a chunked body")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            _read_headers(reader)  # trailers
            return b"".join(parts)
        total += size
        if total > MAX_RESPONSE_BYTES:
            raise ResponseTooLarge(OVER_LIMIT)
        chunk = reader.read(size + 2)
        if len(chunk) < size + 2:
            raise ConnectionError("the server closed the connection in a chunked body")
        parts.append(chunk[:size])
