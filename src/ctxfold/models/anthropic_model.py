"""A client for Anthropic's Messages API; the official ``anthropic`` SDK loads on first use."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ctxfold.errors import MissingAPIKeyError, ModelSpecError
from ctxfold.models._base import (
    Completion,
    Message,
    NativeToolCall,
    TokenUsage,
    ToolCompletion,
)
from ctxfold.models._bounded import bounded_transport
from ctxfold.models._prices import table_knows, table_price
from ctxfold.models._retry import (
    BadResponseError,
    CallFailure,
    RetryPolicy,
    attempt_timeout,
    classify_sdk_error,
    deadline_option,
)
from ctxfold.models.openai_compat import _display_url, _SdkClients

if TYPE_CHECKING:
    import anthropic
    import httpx2

__all__ = ["AnthropicModel"]

_MESSAGES_PATH = "/v1/messages"
_DEFAULT_MAX_TOKENS = 4096
_OPTION_KEYS = ("max_tokens", "temperature", "stop", "timeout")
_POOL_CONNECTIONS = 256
_POOL_KEEPALIVE = 128
_DEFAULT_RETRY = RetryPolicy()
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


class AnthropicModel:
    """A Claude model behind Anthropic's Messages API.

    Takes the same arguments as :class:`~ctxfold.models.OpenAIModel`. ``api_key`` defaults to
    ``$ANTHROPIC_API_KEY`` and ``base_url`` to ``$ANTHROPIC_BASE_URL``. System messages go to
    the ``system`` field; ``max_tokens`` defaults to 4096; ``stop`` becomes ``stop_sequences``;
    ``seed`` is not supported and ignored. ``finish_reason`` is reported in OpenAI's words
    (``"stop"``, ``"length"``, ``"tool_calls"``) when there is an equivalent. ``native_tools``
    (default true) lets sub-LLM tool loops use ``tool_use`` / ``tool_result`` blocks
    (:meth:`complete_with_tools`) instead of ctxfold's text protocol.

    Raises:
        MissingAPIKeyError: no key was given and ``ANTHROPIC_API_KEY`` is not set.
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
    ) -> None:
        if not name:
            raise ModelSpecError("AnthropicModel needs a model name")
        key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
        if key is None:
            raise MissingAPIKeyError(
                "ANTHROPIC_API_KEY is not set: export it, or use model='local' for the offline "
                "model"
            )
        self.name = name
        self.context_window = context_window
        self.base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self.timeout = timeout
        self.retry = retry
        self.price_per_mtok = price_per_mtok
        self.native_tools = native_tools
        self._key = key
        defaults = dict(default_options or {})
        self._default_known = {k: defaults.pop(k) for k in _OPTION_KEYS if k in defaults}
        self._default_extra = defaults
        where = f" at {_display_url(self.base_url)}" if self.base_url else ""
        self._what = f"anthropic model {name!r}{where}"
        self._clients: _SdkClients[anthropic.Anthropic, anthropic.AsyncAnthropic] = _SdkClients(
            self._make_sync, self._make_async
        )
        self._classify: Callable[[Exception], CallFailure | None] = lambda exc: None
        self._response_type: type[httpx2.Response] | None = None

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"AnthropicModel({self.name!r}{where})"

    def complete(self, messages: Sequence[Message], **options: Any) -> Completion:
        """One message; :class:`~ctxfold.errors.ModelError` once retries are spent."""
        client = self._clients.sync()
        body, request_options = self._request(messages, options)
        cast_to = self._response_type
        assert cast_to is not None
        deadline = deadline_option(options)

        def attempt() -> Completion:
            response = client.post(
                _MESSAGES_PATH, body=body, cast_to=cast_to, options=_cut(request_options, deadline)
            )
            return self._parse(response.content)

        return self.retry.call(attempt, self._classify, self._what, deadline)

    async def acomplete(self, messages: Sequence[Message], **options: Any) -> Completion:
        """The async form of :meth:`complete`."""
        client = self._clients.async_client()
        body, request_options = self._request(messages, options)
        cast_to = self._response_type
        assert cast_to is not None
        deadline = deadline_option(options)

        async def attempt() -> Completion:
            response = await client.post(
                _MESSAGES_PATH, body=body, cast_to=cast_to, options=_cut(request_options, deadline)
            )
            return self._parse(response.content)

        return await self.retry.acall(attempt, self._classify, self._what, deadline)

    def close(self) -> None:
        """Close the HTTP clients (a later call opens new ones)."""
        self._clients.close()

    def complete_with_tools(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        **options: Any,
    ) -> ToolCompletion:
        """One message that may call ``tools`` natively (see
        :class:`~ctxfold.models._base.ToolModel` for the message and tool formats)."""
        client = self._clients.sync()
        body, request_options = self._tools_request(messages, tools, options)
        cast_to = self._response_type
        assert cast_to is not None
        deadline = deadline_option(options)

        def attempt() -> ToolCompletion:
            response = client.post(
                _MESSAGES_PATH, body=body, cast_to=cast_to, options=_cut(request_options, deadline)
            )
            return self._parse_tools(response.content)

        return self.retry.call(attempt, self._classify, self._what, deadline)

    async def acomplete_with_tools(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        **options: Any,
    ) -> ToolCompletion:
        """The async form of :meth:`complete_with_tools`."""
        client = self._clients.async_client()
        body, request_options = self._tools_request(messages, tools, options)
        cast_to = self._response_type
        assert cast_to is not None
        deadline = deadline_option(options)

        async def attempt() -> ToolCompletion:
            response = await client.post(
                _MESSAGES_PATH, body=body, cast_to=cast_to, options=_cut(request_options, deadline)
            )
            return self._parse_tools(response.content)

        return await self.retry.acall(attempt, self._classify, self._what, deadline)

    async def aclose(self) -> None:
        """Close the HTTP clients, awaiting the async one of the running loop."""
        await self._clients.aclose()

    def _request(
        self, messages: Sequence[Message], options: Mapping[str, Any]
    ) -> tuple[dict[str, Any], anthropic.RequestOptions]:
        known = self._default_known
        if options:
            known = {**known, **{k: options[k] for k in _OPTION_KEYS if options.get(k) is not None}}
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        body: dict[str, Any] = {
            **self._default_extra,
            "model": self.name,
            "max_tokens": known.get("max_tokens", _DEFAULT_MAX_TOKENS),
            "messages": [
                {"role": m["role"], "content": m["content"]}
                for m in messages
                if m["role"] != "system"
            ],
        }
        if system:
            body["system"] = system
        prefix = options.get("cache_prefix") if options else None
        if isinstance(prefix, int) and prefix > 0:
            _mark_cached_prefix(body, messages, prefix)
        if "temperature" in known:
            body["temperature"] = known["temperature"]
        if "stop" in known:
            stop = known["stop"]
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        return body, {"timeout": known.get("timeout", self.timeout)}

    def _tools_request(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any],
    ) -> tuple[dict[str, Any], anthropic.RequestOptions]:
        """:meth:`_request` for a tool-loop turn: ``tool_use`` / ``tool_result`` turns, and the
        tools as Messages API tool definitions."""
        body, request_options = self._request(messages, options)  # type: ignore[arg-type]
        body["messages"] = _wire_messages(messages)
        if tools:
            body["tools"] = [
                {
                    "name": t["name"],
                    "description": t.get("description") or "",
                    "input_schema": t.get("parameters") or {"type": "object"},
                }
                for t in tools
            ]
        return body, request_options

    def _parse_tools(self, content: bytes) -> ToolCompletion:
        """:meth:`_parse` plus the reply's ``tool_use`` blocks."""
        completion = self._parse(content)
        calls = tuple(
            _tool_call(i, block)
            for i, block in enumerate(json.loads(content)["content"])
            if isinstance(block, dict) and block.get("type") == "tool_use"
        )
        return ToolCompletion(
            completion.text, completion.usage, completion.model, completion.finish_reason, calls
        )

    def _parse(self, content: bytes) -> Completion:
        try:
            data = json.loads(content)
        except ValueError:
            raise BadResponseError("the server sent a body that is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise BadResponseError("the response has no content list")
        text = "".join(
            str(block.get("text") or "")
            for block in data["content"]
            if isinstance(block, dict) and block.get("type") == "text"
        )
        stop_reason = data.get("stop_reason")
        if isinstance(stop_reason, str):
            stop_reason = _FINISH_REASONS.get(stop_reason, stop_reason)
        return Completion(
            text=text,
            usage=self._usage(data.get("usage")),
            model=self.name,
            finish_reason=stop_reason if isinstance(stop_reason, str) else None,
        )

    def _usage(self, raw: object) -> TokenUsage:
        usage = raw if isinstance(raw, dict) else {}

        def count(key: str) -> int:
            value = usage.get(key)
            return value if isinstance(value, int) else 0

        cached = count("cache_read_input_tokens")
        # Anthropic's input_tokens leave out cache reads and writes; ours count every input token.
        input_tokens = count("input_tokens") + cached + count("cache_creation_input_tokens")
        output_tokens = count("output_tokens")
        found = TokenUsage(input_tokens, output_tokens, cached, estimated=False)
        if self.price_per_mtok is not None:
            price_in, price_out = self.price_per_mtok
            cost = (input_tokens * price_in + output_tokens * price_out) / 1_000_000
            return replace(found, cost_usd=cost)
        return replace(found, cost_usd=table_price(self.name, "anthropic", found))

    @property
    def priced(self) -> bool:
        """Whether the cost of its calls is known (given prices, or the price table's)."""
        return self.price_per_mtok is not None or (table_knows(self.name, "anthropic"))

    def prepare(self) -> None:
        """Import the SDK and build the client now rather than on the first call (see
        :meth:`OpenAIModel.prepare`). Connects to nothing."""
        self._clients.sync()

    def _adopt(self) -> None:
        import anthropic  # the SDKs load on first use
        import httpx2

        self._response_type = httpx2.Response
        self._classify = functools.partial(classify_sdk_error, sdk=anthropic)

    def _http_options(self, asynchronous: bool = False) -> dict[str, Any]:
        import httpx2

        limits = httpx2.Limits(
            max_connections=_POOL_CONNECTIONS, max_keepalive_connections=_POOL_KEEPALIVE
        )
        kind = httpx2.AsyncHTTPTransport if asynchronous else httpx2.HTTPTransport
        # response bodies bounded (see _bounded.py)
        return {"transport": bounded_transport(kind(limits=limits)), "timeout": self.timeout}

    def _make_sync(self) -> anthropic.Anthropic:
        import anthropic

        self._adopt()
        return anthropic.Anthropic(
            api_key=self._key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,
            http_client=anthropic.DefaultHttpxClient(**self._http_options()),
        )

    def _make_async(self) -> anthropic.AsyncAnthropic:
        import anthropic

        self._adopt()
        return anthropic.AsyncAnthropic(
            api_key=self._key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,
            http_client=anthropic.DefaultAsyncHttpxClient(**self._http_options(True)),
        )


def _cut(options: anthropic.RequestOptions, deadline: float | None) -> anthropic.RequestOptions:
    """``options`` with the attempt's timeout cut to what is left before ``deadline``."""
    if deadline is None:
        return options
    return {**options, "timeout": attempt_timeout(options.get("timeout"), deadline)}


def _wire_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tool-loop messages as Messages API turns: assistant ``tool_use`` blocks, ``tool`` results
    as user ``tool_result`` blocks; consecutive turns of one role are merged (the API wants the
    roles to alternate, and all results of one assistant turn in the next user turn)."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role == "system":
            continue
        blocks: list[dict[str, Any]] = []
        if role == "tool":
            role = "user"
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message["tool_call_id"],
                "content": message["content"],
            }
            if message.get("is_error"):
                result["is_error"] = True
            blocks.append(result)
        else:
            if message.get("content"):
                blocks.append({"type": "text", "text": message["content"]})
            for call in message.get("tool_calls") or ():
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": call["name"],
                        "input": call["arguments"],
                    }
                )
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def _tool_call(index: int, block: Mapping[str, Any]) -> NativeToolCall:
    """One ``tool_use`` block of a response."""
    call_id = block.get("id")
    call_id = call_id if isinstance(call_id, str) and call_id else f"toolu_{index}"
    arguments = block.get("input")
    if arguments is None:
        arguments = {}
    name = str(block.get("name") or "")
    if not isinstance(arguments, dict):
        return NativeToolCall(call_id, name, {}, "the input must be a JSON object")
    return NativeToolCall(call_id, name, arguments)


_EPHEMERAL = {"type": "ephemeral"}


def _mark_cached_prefix(body: dict[str, Any], messages: Sequence[Message], prefix: int) -> None:
    """Prompt-cache breakpoints on the fixed prefix (the first ``prefix`` messages): the system
    text, and the prefix's last non-system message (two of Anthropic's four breakpoints)."""
    if isinstance(body.get("system"), str):
        body["system"] = [{"type": "text", "text": body["system"], "cache_control": _EPHEMERAL}]
    kept = sum(1 for m in messages[:prefix] if m["role"] != "system")
    if kept:
        last = body["messages"][kept - 1]
        if isinstance(last["content"], str) and last["content"]:
            text = last["content"]
            last["content"] = [{"type": "text", "text": text, "cache_control": _EPHEMERAL}]
