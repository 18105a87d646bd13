"""A client for OpenAI and OpenAI-compatible chat servers (vLLM, llama.cpp, Ollama, OpenRouter...).

The ``openai`` SDK is imported on first use, so importing ctxfold stays fast. One sync client
(with a large connection pool) is shared by every thread; async calls get one client per event
loop. The SDK's own retries are off: :class:`~ctxfold.models.RetryPolicy` does that job.

The hot path: the SDK client is built once and owns the configuration (base URL, key, organisation
and project headers) and the connection pool; each call then sends one pre-built POST on the SDK's
own HTTP client, skipping the SDK's per-request option models, copies and header merging (about
0.4 ms a call). Failures are raised as the SDK's own exception types, so they are classified
exactly as before. One TLS context is shared by every client of the process: loading the trust
store costs about 20 ms per client otherwise.

A plain-``http://`` server reached without a proxy (a local vLLM, llama.cpp, Ollama...) gets
an even shorter path for sync calls: the keep-alive client of :mod:`ctxfold.models._http` writes
the pre-built request in one ``sendall`` and reads the framed answer itself (0.25 ms a call on
loopback against 0.85 ms through the HTTP client's generic machinery, which also loads every
thread of a batch). Its transport failures are raised as the HTTP client's exception types and
non-2xx answers as the HTTP client's responses, so the SDK's errors and the retries are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import ssl
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from ctxfold.choices import choice_grammar, pack_grammar
from ctxfold.errors import MissingAPIKeyError, ModelSpecError
from ctxfold.models._base import (
    Completion,
    Message,
    NativeToolCall,
    TokenUsage,
    ToolCompletion,
)
from ctxfold.models._bounded import bounded_transport
from ctxfold.models._http import DirectHTTP
from ctxfold.models._prices import table_knows, table_price
from ctxfold.models._retry import (
    BadResponseError,
    CallFailure,
    RetryPolicy,
    attempt_timeout,
    classify_sdk_error,
    deadline_option,
)
from ctxfold.models._tokens import count_message_tokens, count_tokens

if TYPE_CHECKING:
    import httpx2
    import openai

__all__ = ["OpenAIModel"]

_CHAT_PATH = "chat/completions"  # joined to the SDK's base URL, which ends with "/"
_DUMMY_KEY = "not-needed"
_OPTION_KEYS = ("max_tokens", "temperature", "stop", "seed", "timeout")
_POOL_CONNECTIONS = 256
_POOL_KEEPALIVE = 128
_DEFAULT_RETRY = RetryPolicy()


class OpenAIModel:
    """A chat model behind the OpenAI Chat Completions API.

    Per-call options: ``max_tokens`` (sent as ``max_completion_tokens`` to the OpenAI API),
    ``temperature``, ``stop``, ``seed`` and ``timeout`` (seconds per attempt); others are ignored.

    Args:
        name: the model name the server knows (``"gpt-5-mini"``, ``"qwen2.5-7b-instruct"``...).
        base_url: an OpenAI-compatible server, e.g. ``"http://127.0.0.1:8000/v1"``; defaults to
            ``$OPENAI_BASE_URL``, else the OpenAI API.
        api_key: defaults to ``$OPENAI_API_KEY``. Required for the OpenAI API; another server
            without one gets the placeholder ``"not-needed"``.
        context_window: the model's window in tokens, if known.
        timeout: seconds allowed per attempt (overridable per call with ``timeout=``).
        retry: the retry policy.
        price_per_mtok: ``(input, output)`` dollars per million tokens, to fill ``cost_usd``.
            Without it, a numeric ``usage.cost`` in the response (OpenRouter) is used.
        default_options: request fields sent with every call: the per-call options and any other
            field the server knows (``top_p``, ``response_format``...); per-call options win.
        native_tools: let sub-LLM tool loops use the Chat Completions ``tools`` field
            (:meth:`complete_with_tools`); ``False`` for servers without tool calling, whose
            sub-LLMs then use ctxfold's text protocol.
        grammar_choices: the server takes a llama.cpp GBNF ``grammar`` field (llama.cpp, its
            Python bindings): the ``choices`` call option then becomes a grammar, so the reply
            is exactly one choice (with ``choice_items=N``: N numbered lines, each a choice).
            Other servers ignore ``choices``; ctxfold checks the reply.

    Raises:
        MissingAPIKeyError: the OpenAI API was chosen and no key is set.
    """

    def __init__(
        self,
        name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        context_window: int | None = None,
        timeout: float = 600.0,
        retry: RetryPolicy = _DEFAULT_RETRY,
        price_per_mtok: tuple[float, float] | None = None,
        default_options: Mapping[str, Any] | None = None,
        native_tools: bool = True,
        grammar_choices: bool = False,
    ) -> None:
        if not name:
            raise ModelSpecError("OpenAIModel needs a model name")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY") or None
        official = base_url is None or urlsplit(base_url).hostname == "api.openai.com"
        if key is None:
            if official:
                raise MissingAPIKeyError(
                    "OPENAI_API_KEY is not set: export it, or use model='local' for the offline "
                    "model, or 'openai:NAME@http://host:port/v1' for an OpenAI-compatible server"
                )
            key = _DUMMY_KEY
        self.name = name
        self.context_window = context_window
        self.base_url = base_url
        self.timeout = timeout
        self.retry = retry
        self.price_per_mtok = price_per_mtok
        self.native_tools = native_tools
        self.grammar_choices = grammar_choices
        self._key = key
        # The OpenAI API wants max_completion_tokens (reasoning models reject max_tokens);
        # compatible servers know max_tokens.
        self._max_tokens_field = "max_completion_tokens" if official else "max_tokens"
        defaults = dict(default_options or {})
        self._default_known = {k: defaults.pop(k) for k in _OPTION_KEYS if k in defaults}
        self._default_extra = defaults
        where = f" at {_display_url(base_url)}" if base_url else ""
        self._what = f"openai model {name!r}{where}"
        self._clients: _SdkClients[_Conn, _AsyncConn] = _SdkClients(
            self._make_sync, self._make_async
        )
        self._classify: Callable[[Exception], CallFailure | None] = _no_classify
        self._sdk: ModuleType | None = None
        self._timeout_errors: tuple[type[Exception], ...] = ()
        self._request_errors: tuple[type[Exception], ...] = ()

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"OpenAIModel({self.name!r}{where})"

    # -- the Model protocol ----------------------------------------------------------------

    def complete(self, messages: Sequence[Message], **options: Any) -> Completion:
        """One chat completion; :class:`~ctxfold.errors.ModelError` once retries are spent."""
        conn = self._clients.sync()
        payload, timeout = self._encoded(messages, options)
        deadline = deadline_option(options)

        def attempt() -> Completion:
            content = self._post(conn, payload, attempt_timeout(timeout, deadline))
            return self._parse(content, messages)

        return self.retry.call(attempt, self._classify, self._what, deadline)

    async def acomplete(self, messages: Sequence[Message], **options: Any) -> Completion:
        """The async form of :meth:`complete`."""
        conn = self._clients.async_client()
        payload, timeout = self._encoded(messages, options)
        deadline = deadline_option(options)

        async def attempt() -> Completion:
            content = await self._apost(conn, payload, attempt_timeout(timeout, deadline))
            return self._parse(content, messages)

        return await self.retry.acall(attempt, self._classify, self._what, deadline)

    def close(self) -> None:
        """Close the HTTP clients (a later call opens new ones)."""
        self._clients.close()

    # -- native tool calls (the ToolModel capability) --------------------------------------

    def complete_with_tools(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        **options: Any,
    ) -> ToolCompletion:
        """One chat completion that may call ``tools`` natively (see
        :class:`~ctxfold.models._base.ToolModel` for the message and tool formats)."""
        conn = self._clients.sync()
        payload, timeout = self._tools_encoded(messages, tools, options)
        deadline = deadline_option(options)

        def attempt() -> ToolCompletion:
            content = self._post(conn, payload, attempt_timeout(timeout, deadline))
            return self._parse_tools(content, messages)

        return self.retry.call(attempt, self._classify, self._what, deadline)

    async def acomplete_with_tools(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        **options: Any,
    ) -> ToolCompletion:
        """The async form of :meth:`complete_with_tools`."""
        conn = self._clients.async_client()
        payload, timeout = self._tools_encoded(messages, tools, options)
        deadline = deadline_option(options)

        async def attempt() -> ToolCompletion:
            content = await self._apost(conn, payload, attempt_timeout(timeout, deadline))
            return self._parse_tools(content, messages)

        return await self.retry.acall(attempt, self._classify, self._what, deadline)

    async def aclose(self) -> None:
        """Close the HTTP clients, awaiting the async one of the running loop."""
        await self._clients.aclose()

    # -- request and response --------------------------------------------------------------

    def _encoded(
        self, messages: Sequence[Message], options: Mapping[str, Any]
    ) -> tuple[bytes, Any]:
        """The JSON body of one call (encoded once, reused by retries) and its timeout."""
        body, request_options = self._request(messages, options)
        return json.dumps(body).encode(), request_options["timeout"]

    def _tools_encoded(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any],
    ) -> tuple[bytes, Any]:
        """:meth:`_encoded` for a tool-loop turn: the messages in wire form, and the tools."""
        wire = [_wire_message(m) for m in messages]
        body, request_options = self._request(wire, options)  # type: ignore[arg-type]
        if tools:
            body["tools"] = [_wire_tool(t) for t in tools]
        return json.dumps(body).encode(), request_options["timeout"]

    def _request(
        self, messages: Sequence[Message], options: Mapping[str, Any]
    ) -> tuple[dict[str, Any], openai.RequestOptions]:
        known = self._default_known
        if options:
            known = {**known, **{k: options[k] for k in _OPTION_KEYS if options.get(k) is not None}}
        body: dict[str, Any] = {**self._default_extra, "model": self.name}
        body["messages"] = messages if isinstance(messages, list) else list(messages)
        for key, value in known.items():
            if key == "max_tokens":
                body[self._max_tokens_field] = value
            elif key != "timeout":
                body[key] = value
        choices = options.get("choices") if self.grammar_choices else None
        if choices:
            items = options.get("choice_items")
            body["grammar"] = pack_grammar(items, choices) if items else choice_grammar(choices)
        return body, {"timeout": known.get("timeout", self.timeout)}

    def _post(self, conn: _Conn, payload: bytes, timeout: Any) -> bytes:
        """One POST of ``payload`` to the chat endpoint; the body of a 2xx answer. Failures are
        raised as the SDK raises them."""
        direct = conn.direct
        if direct is None or not isinstance(timeout, int | float) or isinstance(timeout, bool):
            request = conn.build(payload, timeout)
            try:
                response = conn.http.send(request)
            except Exception as exc:
                raise self._mapped(exc, request) from exc
            return self._checked(response).content
        try:
            status, headers, content = direct.post(payload, float(timeout))
        except Exception as exc:
            raise self._mapped(exc, conn.build(payload, timeout)) from exc
        if 200 <= status < 300:
            return content
        import httpx2  # loaded with the SDK

        request = conn.build(payload, timeout)
        self._checked(httpx2.Response(status, headers=headers, content=content, request=request))
        raise AssertionError("unreachable: a non-2xx answer raises")  # pragma: no cover

    async def _apost(self, conn: _AsyncConn, payload: bytes, timeout: Any) -> bytes:
        """The async form of :meth:`_post`, through the async HTTP client."""
        request = conn.http.build_request(
            "POST", conn.url, content=payload, headers=conn.headers, timeout=timeout
        )
        try:
            response = await conn.http.send(request)
        except Exception as exc:
            raise self._mapped(exc, request) from exc
        return self._checked(response).content

    def _mapped(self, exc: Exception, request: httpx2.Request) -> Exception:
        mapped = self._sdk_error(exc, request)
        if mapped is None:
            raise exc
        return mapped

    def _sdk_error(self, exc: Exception, request: httpx2.Request) -> Exception | None:
        """A transport failure as the SDK raises it (``APITimeoutError``, ``APIConnectionError``);
        ``None`` for anything else (a bug), which propagates untouched."""
        sdk = self._sdk
        assert sdk is not None
        if isinstance(exc, self._timeout_errors):
            return sdk.APITimeoutError(request=request)  # type: ignore[no-any-return]
        if isinstance(exc, self._request_errors):
            return sdk.APIConnectionError(request=request)  # type: ignore[no-any-return]
        return None

    def _checked(self, response: httpx2.Response) -> httpx2.Response:
        """``response`` if its status is 2xx; else the SDK's ``APIStatusError`` is raised."""
        if response.is_success:
            return response
        sdk = self._sdk
        assert sdk is not None
        body: object = response.text
        with contextlib.suppress(ValueError):
            body = json.loads(response.content)
        data = body.get("error", body) if isinstance(body, dict) else body
        raise sdk.APIStatusError(
            f"Error code: {response.status_code}", response=response, body=data
        )

    def _parse(self, content: bytes, messages: Sequence[Message]) -> Completion:
        try:
            data = json.loads(content)
        except ValueError:
            raise BadResponseError("the server sent a body that is not JSON") from None
        if not isinstance(data, dict):
            raise BadResponseError("the server sent JSON that is not an object")
        choices = data.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise BadResponseError("the response has no choices")
        choice = choices[0]
        message = choice.get("message")
        text = _text_of(message.get("content") if isinstance(message, dict) else None)
        reason = choice.get("finish_reason")
        return Completion(
            text=text,
            usage=self._usage(data.get("usage"), messages, text),
            model=self.name,
            finish_reason=reason if isinstance(reason, str) else None,
        )

    def _parse_tools(self, content: bytes, messages: Sequence[Mapping[str, Any]]) -> ToolCompletion:
        completion = self._parse(content, messages)  # type: ignore[arg-type]
        message = json.loads(content)["choices"][0].get("message")
        raw_calls = message.get("tool_calls") if isinstance(message, dict) else None
        calls = tuple(
            _tool_call(i, call)
            for i, call in enumerate(raw_calls if isinstance(raw_calls, list) else [])
            if isinstance(call, dict)
        )
        return ToolCompletion(
            completion.text, completion.usage, completion.model, completion.finish_reason, calls
        )

    def _usage(self, raw: object, messages: Sequence[Message], text: str) -> TokenUsage:
        usage = raw if isinstance(raw, dict) else {}
        prompt = usage.get("prompt_tokens")
        if isinstance(prompt, int):
            output = usage.get("completion_tokens")
            details = usage.get("prompt_tokens_details")
            cached = details.get("cached_tokens") if isinstance(details, dict) else None
            input_tokens, estimated = prompt, False
            output_tokens = output if isinstance(output, int) else 0
            cached_tokens = cached if isinstance(cached, int) else 0
        else:
            input_tokens = count_message_tokens(messages)
            output_tokens = count_tokens(text)
            cached_tokens, estimated = 0, True
        cost: float | None = None
        if self.price_per_mtok is not None:
            price_in, price_out = self.price_per_mtok
            cost = (input_tokens * price_in + output_tokens * price_out) / 1_000_000
        elif isinstance(usage.get("cost"), int | float) and not isinstance(usage["cost"], bool):
            cost = float(usage["cost"])
        found = TokenUsage(input_tokens, output_tokens, cached_tokens, estimated, cost)
        if cost is None:  # the price table's, for a model it knows (at any endpoint)
            return replace(found, cost_usd=table_price(self.name, "openai", found))
        return found

    @property
    def priced(self) -> bool:
        """Whether the cost of its calls is known (given prices, or the price table's)."""
        return self.price_per_mtok is not None or (table_knows(self.name, "openai"))

    def prepare(self) -> None:
        """Import the SDK and build the client now rather than on the first call. A server
        calls this before it freezes its start-up heap, so the SDK's many objects are frozen
        too. Connects to nothing."""
        self._clients.sync()

    # -- SDK clients -----------------------------------------------------------------------

    def _adopt(self, sdk: ModuleType) -> None:
        """Remember what the hot path needs from the freshly imported SDK."""
        import anyio  # the SDKs load on first use
        import httpx2

        self._sdk = sdk
        self._classify = functools.partial(classify_sdk_error, sdk=sdk)
        # What the SDK maps to APITimeoutError and APIConnectionError (openai._httpx2).
        self._timeout_errors = (httpx2.TimeoutException,)
        self._request_errors = (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream)

    def _make_sync(self) -> _Conn:
        import openai

        self._adopt(openai)
        http = openai.DefaultHttpx2Client(timeout=self.timeout, transport=_transport(False))
        client = openai.OpenAI(
            api_key=self._key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,
            http_client=http,
        )
        return _Conn(
            client, http, client.base_url, {**client.default_headers, **client.auth_headers}
        )

    def _make_async(self) -> _AsyncConn:
        import openai

        self._adopt(openai)
        http = openai.DefaultAsyncHttpx2Client(timeout=self.timeout, transport=_transport(True))
        client = openai.AsyncOpenAI(
            api_key=self._key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,
            http_client=http,
        )
        return _AsyncConn(
            client, http, client.base_url, {**client.default_headers, **client.auth_headers}
        )


class _Conn:
    """A built SDK client and what one call needs from it, computed once: its HTTP client (the
    connection pool), the chat completions URL and the request headers (key, organisation,
    project, user agent)."""

    __slots__ = ("direct", "headers", "http", "sdk_client", "url")

    def __init__(
        self,
        sdk_client: openai.OpenAI,
        http: httpx2.Client,
        base_url: object,
        headers: Mapping[str, object],
    ) -> None:
        self.sdk_client = sdk_client
        self.http = http
        self.url, self.headers = _chat_target(base_url, headers)
        self.direct = DirectHTTP.for_url(self.url, self.headers, max_idle=_POOL_KEEPALIVE)

    def build(self, payload: bytes, timeout: Any) -> httpx2.Request:
        """The request as the HTTP client sends it."""
        return self.http.build_request(
            "POST", self.url, content=payload, headers=self.headers, timeout=timeout
        )

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()
        self.sdk_client.close()


def _chat_target(base_url: object, headers: Mapping[str, object]) -> tuple[Any, dict[str, str]]:
    """The chat completions URL (parsed once, not per call) and the headers to send: the SDK
    marks headers to leave out (an unset organisation...) with non-str values."""
    import httpx2  # loaded with the SDK

    url = httpx2.URL(f"{base_url}{_CHAT_PATH}")
    return url, {k: v for k, v in headers.items() if isinstance(v, str)}


class _AsyncConn:
    """The async twin of :class:`_Conn`."""

    __slots__ = ("headers", "http", "sdk_client", "url")

    def __init__(
        self,
        sdk_client: openai.AsyncOpenAI,
        http: httpx2.AsyncClient,
        base_url: object,
        headers: Mapping[str, object],
    ) -> None:
        self.sdk_client = sdk_client
        self.http = http
        self.url, self.headers = _chat_target(base_url, headers)

    async def close(self) -> None:
        await self.sdk_client.close()


def _transport(asynchronous: bool) -> Any:
    """The connection pool of one client, its response bodies bounded (see ``_bounded.py``)."""
    import httpx2

    kind = httpx2.AsyncHTTPTransport if asynchronous else httpx2.HTTPTransport
    return bounded_transport(kind(limits=_limits(), verify=_tls_context()))


def _limits() -> httpx2.Limits:
    import httpx2

    return httpx2.Limits(
        max_connections=_POOL_CONNECTIONS, max_keepalive_connections=_POOL_KEEPALIVE
    )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The TLS context every client of this process shares (as the SDK would build it)."""
    import httpx2

    return httpx2.create_ssl_context()


def _no_classify(exc: Exception) -> CallFailure | None:
    return None


def _text_of(content: object) -> str:
    """The text of a message's ``content``: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    return ""


def _wire_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A neutral ``{"name", "description", "parameters"}`` tool as a Chat Completions tool."""
    function = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _wire_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A tool-loop message in Chat Completions form (assistant ``tool_calls``, ``tool`` role)."""
    role = message["role"]
    if role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message["tool_call_id"],
            "content": message["content"],
        }
    if role == "assistant" and message.get("tool_calls"):
        return {
            "role": "assistant",
            "content": message.get("content") or None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {
                        "name": call["name"],
                        "arguments": json.dumps(call["arguments"], ensure_ascii=False),
                    },
                }
                for call in message["tool_calls"]
            ],
        }
    return {"role": role, "content": message["content"]}


def _tool_call(index: int, raw: Mapping[str, Any]) -> NativeToolCall:
    """One ``tool_calls`` entry of a response; arguments come as a JSON string (or an object)."""
    function = raw.get("function")
    function = function if isinstance(function, dict) else {}
    call_id = raw.get("id")
    call_id = call_id if isinstance(call_id, str) and call_id else f"call_{index}"
    name = str(function.get("name") or "")
    arguments = function.get("arguments")
    if arguments is None or arguments == "":
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            return NativeToolCall(
                call_id, name, {}, f"the arguments are not valid JSON ({exc.msg})"
            )
    if not isinstance(arguments, dict):
        return NativeToolCall(call_id, name, {}, "arguments must be a JSON object")
    return NativeToolCall(call_id, name, arguments)


def _display_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"{host}{port}").geturl()


# -- lazily built SDK clients, shared with the Anthropic client ----------------------------


class _Closeable(Protocol):
    def close(self) -> None: ...


class _AsyncCloseable(Protocol):
    def close(self) -> Coroutine[Any, Any, None]: ...


_S = TypeVar("_S", bound=_Closeable)
_A = TypeVar("_A", bound=_AsyncCloseable)
_closing_tasks: set[asyncio.Future[None]] = set()


class _SdkClients(Generic[_S, _A]):
    """One sync SDK client, built on first use and shared by all threads, and one async client
    per event loop (an async connection pool cannot move between loops)."""

    def __init__(self, make_sync: Callable[[], _S], make_async: Callable[[], _A]) -> None:
        self._make_sync = make_sync
        self._make_async = make_async
        self._lock = threading.Lock()
        self._sync: _S | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _A] = (
            weakref.WeakKeyDictionary()
        )

    def sync(self) -> _S:
        client = self._sync
        if client is None:
            with self._lock:
                if self._sync is None:
                    self._sync = self._make_sync()
                client = self._sync
        return client

    def async_client(self) -> _A:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            with self._lock:
                client = self._async.get(loop)
                if client is None:
                    client = self._async[loop] = self._make_async()
        return client

    def close(self) -> None:
        with self._lock:
            sync, self._sync = self._sync, None
            pending = list(self._async.items())
            self._async.clear()
        if sync is not None:
            sync.close()
        for loop, client in pending:
            _close_on_loop(loop, client)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.pop(loop, None)
        if client is not None:
            await client.close()
        self.close()


def _close_on_loop(loop: asyncio.AbstractEventLoop, client: _AsyncCloseable) -> None:
    """Close an async client from sync code: on its own loop if that loop still runs."""
    if loop.is_closed() or not loop.is_running():
        return  # its connections die with the loop
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    if current is loop:
        task = loop.create_task(client.close())
        _closing_tasks.add(task)
        task.add_done_callback(_closing_tasks.discard)
    else:
        asyncio.run_coroutine_threadsafe(client.close(), loop)
