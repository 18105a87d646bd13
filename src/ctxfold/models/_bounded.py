"""Bounded response bodies: a model server cannot make the host read or inflate without limit.

A chat completion is kilobytes; a hostile or broken server could send gigabytes, or a small
gzip body that inflates to a gigabyte. Every client reads a response through these helpers:
at most :data:`MAX_RESPONSE_BYTES` on the wire and the same decoded, else a
``ResponseTooLarge`` error (a ``ValueError``), which the clients report as a failed call.

:class:`BoundedTransport` (and its async twin) wraps the HTTP client's transport used by the
``openai`` and ``anthropic`` SDKs: it asks for no content encoding, reads the body within the
bound, undoes an encoding the server sent anyway within the bound, and hands the SDK a plain
body. :func:`decode_body` is shared with the direct HTTP path (``_http.py``).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "MAX_RESPONSE_BYTES",
    "OVER_LIMIT",
    "ResponseTooLarge",
    "bounded_transport",
    "decode_body",
]

MAX_RESPONSE_BYTES = 32 * 1024 * 1024
_DROPPED = ("content-encoding", "content-length", "transfer-encoding")
OVER_LIMIT = f"the server's reply is over {MAX_RESPONSE_BYTES:,} bytes"


class ResponseTooLarge(ValueError):
    """A response body (as sent, or decoded) is over the bound."""


def check_length(announced: str | None, limit: int = MAX_RESPONSE_BYTES) -> None:
    """Refuse a body whose ``Content-Length`` is already over ``limit``."""
    if announced is not None:
        length = int(announced.split(",")[0].strip())
        if length > limit:
            raise ResponseTooLarge(
                f"the server announced a {length:,}-byte reply (limit {limit:,})"
            )


def collect(chunks: Iterable[bytes], limit: int = MAX_RESPONSE_BYTES) -> bytes:
    """Join ``chunks``, raising :class:`ResponseTooLarge` once they pass ``limit`` bytes."""
    parts: list[bytes] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise ResponseTooLarge(f"the server's reply is over {limit:,} bytes")
        parts.append(chunk)
    return b"".join(parts)


def decode_body(body: bytes, encoding: str, limit: int = MAX_RESPONSE_BYTES) -> bytes:
    """``body`` without its content encoding (gzip, deflate), inflated to at most ``limit``
    bytes. Raises :class:`ResponseTooLarge`, ``zlib.error`` or ``ValueError`` (unknown coding)."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, 16 + zlib.MAX_WBITS, limit)
        elif coding == "deflate":
            try:
                body = _inflate(body, zlib.MAX_WBITS, limit)
            except zlib.error:
                body = _inflate(body, -zlib.MAX_WBITS, limit)
        elif coding != "identity":
            raise ValueError(f"a content encoding that was not asked for: {coding}")
    return body


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise ResponseTooLarge(f"the server's reply inflates past {limit:,} bytes")
    return out


def _plain_response(
    response: httpx2.Response, body: bytes, request: httpx2.Request
) -> httpx2.Response:
    """``response`` with ``body`` (decoded) as its whole content."""
    import httpx2

    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _DROPPED]
    return httpx2.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=request,
        extensions=response.extensions,
    )


def _is_stream(response: httpx2.Response) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


def bounded_transport(inner: Any) -> Any:
    """``inner`` (an ``httpx2`` transport, sync or async) with bounded response bodies."""
    import httpx2

    if isinstance(inner, httpx2.AsyncBaseTransport):
        return _AsyncBounded(inner)
    return _Bounded(inner)


def _identity(request: httpx2.Request) -> None:
    request.headers["Accept-Encoding"] = "identity"


def _no_encoding(response: httpx2.Response) -> None:
    """A stream is decoded chunk by chunk downstream, past any bound: refuse an encoded one."""
    coding = response.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise ValueError(f"a content encoding that was not asked for: {coding}")


class _Bounded:
    """A sync transport wrapper (see the module docstring)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        _identity(request)
        response = self._inner.handle_request(request)
        try:
            check_length(response.headers.get("content-length"))
            if _is_stream(response):  # server-sent events: counted as they arrive
                _no_encoding(response)
                return _streamed(response, _CountedStream(response.stream), request)
            body = collect(response.stream)
        except BaseException:
            response.close()
            raise
        response.close()
        body = decode_body(body, response.headers.get("content-encoding", ""))
        return _plain_response(response, body, request)

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> _Bounded:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._inner.__exit__(*exc)


class _AsyncBounded:
    """The async twin of :class:`_Bounded`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        _identity(request)
        response = await self._inner.handle_async_request(request)
        try:
            check_length(response.headers.get("content-length"))
            if _is_stream(response):
                _no_encoding(response)
                return _streamed(response, _AsyncCountedStream(response.stream), request)
            parts: list[bytes] = []
            total = 0
            async for chunk in response.stream:
                total += len(chunk)
                if total > MAX_RESPONSE_BYTES:
                    raise ResponseTooLarge(OVER_LIMIT)
                parts.append(chunk)
        except BaseException:
            await response.aclose()
            raise
        await response.aclose()
        body = decode_body(b"".join(parts), response.headers.get("content-encoding", ""))
        return _plain_response(response, body, request)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _AsyncBounded:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._inner.__aexit__(*exc)


def _streamed(response: httpx2.Response, stream: Any, request: httpx2.Request) -> httpx2.Response:
    import httpx2

    return httpx2.Response(
        response.status_code,
        headers=response.headers,
        stream=stream,
        request=request,
        extensions=response.extensions,
    )


class _CountedStream:
    """A sync byte stream that stops past the bound."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        total = 0
        for chunk in self._inner:
            total += len(chunk)
            if total > MAX_RESPONSE_BYTES:
                raise ResponseTooLarge(OVER_LIMIT)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _AsyncCountedStream:
    """The async twin of :class:`_CountedStream`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        async for chunk in self._inner:
            total += len(chunk)
            if total > MAX_RESPONSE_BYTES:
                raise ResponseTooLarge(OVER_LIMIT)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
