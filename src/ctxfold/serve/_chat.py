"""The OpenAI chat-completions wire format: a request read into a run, a run's result written
back as a completion or as stream chunks. No I/O here."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any

from ctxfold.budget import Budget, budget_from_dict
from ctxfold.errors import CtxfoldError
from ctxfold.result import Result

_ROLES = ("system", "developer", "user", "assistant", "tool")


class ApiError(Exception):
    """A request the server refuses, as an OpenAI-style error (``status``, ``code``)."""

    def __init__(
        self, status: int, message: str, *, code: str = "invalid_request", param: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param or None,
                "code": self.code,
            }
        }


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a chat-completions request asks of the RLM."""

    model: str
    question: str
    context: Any
    budget: Budget
    schema: dict[str, Any] | None
    stream: bool
    include_usage: bool


def parse_chat_request(raw: bytes, *, cap: Budget) -> ChatRequest:
    """Read a request body; raises :class:`ApiError` (400) naming what is wrong.

    The last message (a user message) is the question; the earlier ones are the context: the
    one message's text when there is one, else a list of ``{"role", "content"}`` dicts. The
    extra fields ``context`` (used instead), ``budget`` (``Budget`` fields, each at most the
    server's ``cap``) and ``schema`` (a JSON schema; ``response_format`` with a ``json_schema``
    works too) are honoured.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required (a model id of GET /v1/models)", param="model")
    messages = _messages(body.get("messages"))
    question = messages[-1]["content"]
    earlier = messages[:-1]
    if "context" in body:
        context = body["context"]
    elif len(earlier) == 1:
        context = earlier[0]["content"]
    else:
        context = earlier or ""
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return ChatRequest(
        model=model,
        question=question,
        context=context,
        budget=capped_budget(body.get("budget"), cap),
        schema=_schema(body),
        stream=stream,
        include_usage=include_usage,
    )


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise ApiError(
                400,
                f"messages[{i}] must be an object with a role of {', '.join(_ROLES)}",
                param=f"messages[{i}]",
            )
        out.append({"role": message["role"], "content": _text(message.get("content"), i)})
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        raise ApiError(
            400, "the last message must be a user message (the question)", param="messages"
        )
    return out


def _text(content: Any, i: int) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(
                    400,
                    f"messages[{i}]: only text content is served, not {kind!r}",
                    param=f"messages[{i}].content",
                )
            parts.append(str(part.get("text", "")))
        return "\n".join(parts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts")


def capped_budget(value: Any, cap: Budget) -> Budget:
    """The budget of one request: the server's ``cap``, with the fields the request gives,
    each no larger than the cap's (``None`` in the cap means no limit)."""
    if value is None:
        return cap
    if not isinstance(value, dict):
        raise ApiError(400, "'budget' must be an object of Budget fields", param="budget")
    try:
        asked = budget_from_dict({**asdict(cap), **value})
    except (CtxfoldError, TypeError) as exc:
        raise ApiError(400, f"budget: {exc}", param="budget") from None
    for f in fields(Budget):
        limit, wanted = getattr(cap, f.name), getattr(asked, f.name)
        if f.name in value and limit is not None and (wanted is None or wanted > limit):
            raise ApiError(
                400,
                f"budget.{f.name}={wanted} is over this server's cap of {limit}",
                param=f"budget.{f.name}",
            )
    return asked


def _schema(body: dict[str, Any]) -> dict[str, Any] | None:
    schema = body.get("schema")
    response_format = body.get("response_format")
    if (
        schema is None
        and isinstance(response_format, dict)
        and response_format.get("type") == "json_schema"
    ):
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
    if schema is not None and not isinstance(schema, dict):
        raise ApiError(400, "'schema' must be a JSON-schema object", param="schema")
    return schema


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def run_figures(result: Result) -> dict[str, Any]:
    """ctxfold's own figures of a run, sent in the ``ctxfold`` field of a reply."""
    u = result.usage
    figures: dict[str, Any] = {
        "ready": result.ready,
        "stop_reason": result.stop_reason,
        "iterations": result.iterations,
        "root_calls": u.root_calls,
        "sub_calls": u.sub_calls,
        "cost_usd": u.cost_usd,
        "seconds": round(result.seconds, 3),
    }
    if result.value is not None:
        figures["value"] = result.value
    if result.citations:
        figures["citations"] = [
            {"where": c.where, "quote": c.quote, "source": c.source} for c in result.citations
        ]
    return figures


def usage_block(result: Result) -> dict[str, int]:
    u = result.usage
    prompt = u.root_input_tokens + u.sub_input_tokens
    completion = u.root_output_tokens + u.sub_output_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def finish_reason(result: Result) -> str:
    return "stop" if result.ready else "length"


def completion_body(cid: str, model: str, result: Result) -> dict[str, Any]:
    """A ``chat.completion`` object for a finished run."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.answer},
                "finish_reason": finish_reason(result),
            }
        ],
        "usage": usage_block(result),
        "ctxfold": run_figures(result),
    }


def chunk(
    cid: str,
    model: str,
    delta: dict[str, Any],
    *,
    finish: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a streamed reply."""
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if extra:
        body.update(extra)
    return body


def sse(data: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event carrying ``data`` (JSON, or a bare string such as ``[DONE]``)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
