"""The bounded multi-turn tool loop of one sub-LLM call, over a text protocol any model can speak.

The sub-LLM's system message lists the tools and asks for exactly one fenced block to call one::

    ```tool
    {"name": "search", "arguments": {"query": "...", "k": 5}}
    ```

The loop runs the tool on the host in a thread with the tool's timeout, sends the (cut) result
back as the next user message, and repeats until the model replies without a tool block or the
turn limit is reached. Tool errors and timeouts become messages to the model, never exceptions.

A model with native tool calling (see :mod:`ctxfold.tools._native`) runs the same loop with the
same limits over its API's own tool fields instead: the tools go in the request, each call's
result goes back as a ``tool`` message answering that call's id.

:func:`arun_tool_loop` is the async twin (``acomplete`` / ``acomplete_with_tools``, tools run
off the event loop). Both drive one loop, written once as a generator of steps.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ctxfold.models import Completion, Message, TokenUsage, ToolCompletion, ToolModel
from ctxfold.tools._native import native_system_text, native_tool_model, tool_specs
from ctxfold.tools._tool import Tool

DEFAULT_TURNS = 6
RESULT_CHARS = 4000

_BLOCK = re.compile(r"```[ \t]*(tool|json)?[ \t]*\r?\n(.*?)\r?\n?[ \t]*```", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """One tool call made in the loop (what the trace records)."""

    turn: int
    tool: str
    arguments: dict[str, Any]
    result: str
    error: str | None
    latency_s: float


def tools_system_text(tools: Sequence[Tool], max_turns: int) -> str:
    """The system-message text that teaches a sub-LLM the tool protocol."""
    lines = ["You can use these tools:"]
    for tool in tools:
        lines.append(f"- {tool.signature()}: {tool.description}".rstrip(": "))
        lines.append(f"  parameters: {json.dumps(tool.parameters, ensure_ascii=False)}")
    lines += [
        "",
        "To call a tool, reply with exactly one fenced block and nothing else:",
        "```tool",
        '{"name": "TOOL_NAME", "arguments": {"PARAM": "VALUE"}}',
        "```",
        "The next message gives you the tool's result. You may call tools up to "
        f"{max_turns} times. When you are done, reply normally with your answer (no tool block).",
    ]
    return "\n".join(lines)


def root_tools_note(tools: Sequence[Tool]) -> str:
    """The line of the root system prompt that says which tools the sub-LLMs have."""
    if not tools:
        return ""
    listed = "; ".join(
        f"{t.signature()} - {t.description.rstrip('.')}" if t.description else t.signature()
        for t in tools
    )
    return (
        f"Sub-LLMs called with llm_query/llm_batch can use these tools: {listed}. "
        "You cannot call them yourself: ask a sub-LLM to use them, e.g. "
        'llm_query("Use the search tool to find ... and answer: ...").'
    )


def parse_tool_call(text: str, names: set[str]) -> tuple[str, dict[str, Any]] | str | None:
    """``(name, arguments)`` of the tool call in ``text``; an error string if a ``tool`` block is
    malformed; ``None`` if the reply calls no tool (a ``json`` block counts only when it names a
    known tool)."""
    for match in _BLOCK.finditer(text):
        label, body = match.group(1), match.group(2).strip()
        try:
            call = json.loads(body)
        except json.JSONDecodeError as exc:
            if label == "tool":
                return f"the tool block is not valid JSON ({exc.msg})"
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            if label == "tool":
                return 'the tool block must be a JSON object {"name": ..., "arguments": {...}}'
            continue
        if label != "tool" and call["name"] not in names:
            continue
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):  # some models send the arguments as a JSON string
            try:
                arguments = json.loads(arguments or "{}")
            except json.JSONDecodeError:
                return "arguments must be a JSON object"
        if not isinstance(arguments, dict):
            return "arguments must be a JSON object"
        return call["name"], arguments
    return None


def run_tool(
    tool: Tool, arguments: dict[str, Any], limit: int = RESULT_CHARS
) -> tuple[str, str | None]:
    """Call ``tool`` in a daemon thread within its timeout: ``(result text, error or None)``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = tool.function(**arguments)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"ctxfold-tool-{tool.name}", daemon=True)
    thread.start()
    thread.join(tool.timeout)
    if thread.is_alive():  # a thread cannot be killed; it is left to finish on its own
        return "", f"timed out after {tool.timeout:g} s"
    if "error" in box:
        exc = box["error"]
        return "", f"{type(exc).__name__}: {exc}"
    return _cut(_as_text(box.get("value")), limit), None


async def arun_tool(
    tool: Tool, arguments: dict[str, Any], limit: int = RESULT_CHARS
) -> tuple[str, str | None]:
    """:func:`run_tool` for async code: the event loop goes on while the tool runs.

    The wait happens in a worker thread (``asyncio.to_thread``) that is busy at most the tool's
    timeout: the tool itself runs in :func:`run_tool`'s daemon thread, so a tool that never
    returns holds no thread of the loop's executor (nor ``asyncio.run``'s exit) past it.
    """
    return await asyncio.to_thread(run_tool, tool, arguments, limit)


def run_tool_loop(
    complete: Callable[[list[Message]], Completion],
    messages: Sequence[Message],
    tools: Sequence[Tool],
    *,
    max_turns: int = DEFAULT_TURNS,
    result_chars: int = RESULT_CHARS,
    on_tool: Callable[[ToolOutcome], None] | None = None,
    should_stop: Callable[[], str | None] | None = None,
    model: object | None = None,
    account: Callable[[TokenUsage], None] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Completion:
    """Run one sub-call with tools: at most ``max_turns`` tool calls, then a final reply.

    ``complete`` makes one text-protocol model call (and accounts for it); ``on_tool`` hears of
    each tool call; ``should_stop`` returns a reason (e.g. a spent budget) to end the loop early.
    When ``model`` calls tools natively (a :class:`~ctxfold.models._base.ToolModel` with
    ``native_tools`` set), the loop calls ``model.complete_with_tools`` itself instead of
    ``complete`` and hands each call's usage to ``account``, passing it ``options`` (e.g. the
    run's ``deadline``). Returns the final reply, with the usage of every model call of the loop
    added up.
    """
    steps = _steps(messages, tools, max_turns, result_chars, on_tool, should_stop, model, account)

    def perform(step: _Step) -> Any:
        if isinstance(step, _RunTool):
            return run_tool(step.tool, step.arguments, step.limit)
        if isinstance(step, _AskNative):
            return step.model.complete_with_tools(step.convo, step.specs, **(options or {}))
        return complete(step.convo)

    answer: Any = None
    while True:
        try:
            step = steps.send(answer)
        except StopIteration as done:
            final: Completion = done.value
            return final
        answer = perform(step)


async def arun_tool_loop(
    acomplete: Callable[[list[Message]], Awaitable[Completion]],
    messages: Sequence[Message],
    tools: Sequence[Tool],
    *,
    max_turns: int = DEFAULT_TURNS,
    result_chars: int = RESULT_CHARS,
    on_tool: Callable[[ToolOutcome], None] | None = None,
    should_stop: Callable[[], str | None] | None = None,
    model: object | None = None,
    account: Callable[[TokenUsage], None] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Completion:
    """The async twin of :func:`run_tool_loop`: the same turns, limits, messages and reports.

    ``acomplete`` makes one text-protocol model call; a native tool model is called with
    ``await model.acomplete_with_tools(...)``; tools run off the event loop (:func:`arun_tool`)
    with their timeouts. ``on_tool``, ``should_stop`` and ``account`` are plain functions.
    """
    steps = _steps(messages, tools, max_turns, result_chars, on_tool, should_stop, model, account)

    async def perform(step: _Step) -> Any:
        if isinstance(step, _RunTool):
            return await arun_tool(step.tool, step.arguments, step.limit)
        if isinstance(step, _AskNative):
            return await step.model.acomplete_with_tools(step.convo, step.specs, **(options or {}))
        return await acomplete(step.convo)

    answer: Any = None
    while True:
        try:
            step = steps.send(answer)
        except StopIteration as done:
            final: Completion = done.value
            return final
        answer = await perform(step)


# -- the loop itself, written once for both drivers ----------------------------------------------
# It yields what it needs done (a model call, a tool run) and is sent back the answer:
# run_tool_loop performs the steps blocking, arun_tool_loop awaits them.


@dataclass(frozen=True, slots=True)
class _Ask:
    """A text-protocol model call; answered with a :class:`Completion`."""

    convo: list[Message]


@dataclass(frozen=True, slots=True)
class _AskNative:
    """A native tool-calling model call; answered with a :class:`ToolCompletion`."""

    model: ToolModel
    convo: list[dict[str, Any]]
    specs: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _RunTool:
    """One tool run; answered with :func:`run_tool`'s ``(result, error)``."""

    tool: Tool
    arguments: dict[str, Any]
    limit: int


_Step = _Ask | _AskNative | _RunTool
_Steps = Generator[_Step, Any, Completion]


def _steps(
    messages: Sequence[Message],
    tools: Sequence[Tool],
    max_turns: int,
    result_chars: int,
    on_tool: Callable[[ToolOutcome], None] | None,
    should_stop: Callable[[], str | None] | None,
    model: object | None,
    account: Callable[[TokenUsage], None] | None,
) -> _Steps:
    native = native_tool_model(model)
    if native is not None:
        return _native_steps(
            native, messages, tools, max_turns, result_chars, on_tool, should_stop, account
        )
    return _text_steps(messages, tools, max_turns, result_chars, on_tool, should_stop)


def _text_steps(
    messages: Sequence[Message],
    tools: Sequence[Tool],
    max_turns: int,
    result_chars: int,
    on_tool: Callable[[ToolOutcome], None] | None,
    should_stop: Callable[[], str | None] | None,
) -> _Steps:
    """The tool loop over the text protocol (a fenced ``tool`` block per call)."""
    by_name = {t.name: t for t in tools}
    convo = _with_tools_system(messages, tools, max_turns)
    usages: list[TokenUsage] = []
    calls = 0
    while True:
        completion: Completion = yield _Ask(convo)
        usages.append(completion.usage)
        parsed = parse_tool_call(completion.text, set(by_name))
        if parsed is None:
            return _summed(completion, completion.text, usages)
        stop = should_stop() if should_stop is not None else None
        if calls >= max_turns or stop:
            why = stop or f"the limit of {max_turns} tool calls was reached"
            text = _BLOCK.sub("", completion.text).strip()
            return _summed(
                completion, text or f"[error: tools: {why} before a final answer]", usages
            )
        calls += 1
        convo.append({"role": "assistant", "content": completion.text})
        name, result, error = yield from _execute(calls, parsed, by_name, result_chars, on_tool)
        convo.append({"role": "user", "content": _result_text(name, result, error, native=False)})
        if calls == max_turns:
            convo[-1]["content"] += "\n\nThat was your last tool call: reply now with your answer."


def _native_steps(
    model: ToolModel,
    messages: Sequence[Message],
    tools: Sequence[Tool],
    max_turns: int,
    result_chars: int,
    on_tool: Callable[[ToolOutcome], None] | None,
    should_stop: Callable[[], str | None] | None,
    account: Callable[[TokenUsage], None] | None,
) -> _Steps:
    """The tool loop over ``model``'s native tool calls (same limits and reports as the text
    protocol; every call of one reply counts as one tool call)."""
    by_name = {t.name: t for t in tools}
    specs = tool_specs(tools)
    convo: list[dict[str, Any]] = [
        dict(m) for m in _with_note(messages, native_system_text(max_turns))
    ]
    usages: list[TokenUsage] = []
    calls = 0
    while True:
        reply: ToolCompletion = yield _AskNative(model, convo, specs)
        if account is not None:
            account(reply.usage)
        usages.append(reply.usage)
        last = Completion(reply.text, reply.usage, reply.model, reply.finish_reason)
        if not reply.tool_calls:
            return _summed(last, reply.text, usages)
        stop = should_stop() if should_stop is not None else None
        if calls >= max_turns or stop:
            why = stop or f"the limit of {max_turns} tool calls was reached"
            text = reply.text.strip()
            return _summed(last, text or f"[error: tools: {why} before a final answer]", usages)
        convo.append({"role": "assistant", "content": reply.text, "tool_calls": _calls(reply)})
        for call in reply.tool_calls:  # every call needs an answer, even past the limit
            error: str | None
            if calls >= max_turns:
                error = f"not run: the limit of {max_turns} tool calls was reached"
                content = _result_text(call.name, "", error, native=True)
            else:
                calls += 1
                parsed = call.error if call.error is not None else (call.name, call.arguments)
                name, result, error = yield from _execute(
                    calls, parsed, by_name, result_chars, on_tool, call.name
                )
                content = _result_text(name, result, error, native=True)
            convo.append(
                {
                    "role": "tool",
                    "tool_call_id": call.id,
                    "name": call.name,
                    "content": content,
                    "is_error": error is not None,
                }
            )
        if calls == max_turns:
            convo[-1]["content"] += "\n\nThat was your last tool call: reply now with your answer."


def _calls(reply: ToolCompletion) -> list[dict[str, Any]]:
    return [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls]


def _result_text(name: str, result: str, error: str | None, *, native: bool) -> str:
    """What the model is told of one call (a native ``tool`` message needs no header)."""
    if error is not None:
        return f"Tool error ({name or 'call'}): {error}"
    return result if native else f"Tool result ({name}):\n{result}"


def _execute(
    turn: int,
    parsed: tuple[str, dict[str, Any]] | str,
    by_name: dict[str, Tool],
    limit: int,
    on_tool: Callable[[ToolOutcome], None] | None,
    name: str = "",
) -> Generator[_Step, Any, tuple[str, str, str | None]]:
    """Run one requested call (or report why it cannot run): ``(name, result, error)``.
    ``name`` is the tool's name when ``parsed`` is an error but the name is known."""
    result, error, latency = "", None, 0.0
    arguments: dict[str, Any] = {}
    if isinstance(parsed, str):
        error = parsed
    else:
        name, arguments = parsed
        tool = by_name.get(name)
        started = time.monotonic()
        if tool is None:
            error = f"unknown tool {name!r}; the tools are: {', '.join(by_name)}"
        else:
            result, error = yield _RunTool(tool, arguments, limit)
        latency = time.monotonic() - started
    if on_tool is not None:
        on_tool(ToolOutcome(turn, name, arguments, result, error, latency))
    return name, result, error


def _with_tools_system(
    messages: Sequence[Message], tools: Sequence[Tool], max_turns: int
) -> list[Message]:
    return _with_note(messages, tools_system_text(tools, max_turns))


def _with_note(messages: Sequence[Message], note: str) -> list[Message]:
    convo: list[Message] = [{"role": m["role"], "content": m["content"]} for m in messages]
    if convo and convo[0]["role"] == "system":
        convo[0]["content"] = f"{convo[0]['content']}\n\n{note}"
    else:
        convo.insert(0, {"role": "system", "content": note})
    return convo


def _summed(last: Completion, text: str, usages: list[TokenUsage]) -> Completion:
    costs = [u.cost_usd for u in usages if u.cost_usd is not None]
    usage = TokenUsage(
        input_tokens=sum(u.input_tokens for u in usages),
        output_tokens=sum(u.output_tokens for u in usages),
        cached_tokens=sum(u.cached_tokens for u in usages),
        estimated=any(u.estimated for u in usages),
        cost_usd=sum(costs) if costs else None,
    )
    return Completion(text=text, usage=usage, model=last.model, finish_reason=last.finish_reason)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n... [cut: {len(text) - limit:,} more characters]"
