"""Reading what the worker sends: every field is checked, nothing is trusted.

Sub-call requests become :class:`SubcallRequest` values for the engine's handler (and its answers
go back slot by slot); a ``tool`` request (a host function of an engine extension) is
carried as an item whose ``prompt`` is the tool's name and ``context`` its arguments; ``result``
messages become the fields of a :class:`CellResult`.
"""

from __future__ import annotations

from typing import Any

from ctxfold.choices import check_choices, check_notes
from ctxfold.sandbox._base import (
    AnswerState,
    CellResult,
    SourceSpan,
    SubcallHandler,
    SubcallItem,
    SubcallRequest,
)

_MAX_ANSWER_CHARS = 4_100_000
MAX_SOURCES = 200  # spans kept from answer["sources"]
_MAX_TOOL_NAME = 64
MAX_ITEMS = 4096  # items in one call message (the worker splits bigger batches)
_MAX_RESTORED = 64  # names in a cell's "restored" list ...
_MAX_NAME = 80  # ... each at most this long


def serve_call(
    handler: SubcallHandler, message: dict[str, Any]
) -> list[str] | dict[str, Any] | str:
    """Answer one ``call`` message through ``handler``: a list with one answer per item (an
    error text in the slot of an invalid item), a dict for ``budget``, or one error text for
    every slot of a request that is refused whole. Never raises."""
    kind, raw_items = message.get("kind"), message.get("items")
    items = raw_items if isinstance(raw_items, list) else []
    if len(items) > MAX_ITEMS:
        return f"[error: {len(items):,} items in one request; at most {MAX_ITEMS:,}]"
    if kind == "budget":
        try:
            reply = handler(SubcallRequest("budget", ()))
        except Exception as exc:
            return {"error": f"budget() failed: {exc}"}
        return reply if isinstance(reply, dict) else {}
    if kind not in ("llm", "rlm", "tool"):
        return ["Error: unknown kind of sub-call"] * len(items)
    parse = _parse_tool_call if kind == "tool" else lambda item: _parse_item(item, kind)
    slots = [parse(item) for item in items]
    valid = [slot for slot in slots if isinstance(slot, SubcallItem)]
    answers: list[str] = []
    if valid:
        try:
            reply = handler(SubcallRequest(kind, tuple(valid)))
        except Exception as exc:
            reply = [f"[error: the sub-call failed: {type(exc).__name__}: {exc}]"] * len(valid)
        answers = _as_answers(reply, len(valid))
    it = iter(answers)
    return [next(it) if isinstance(slot, SubcallItem) else slot for slot in slots]


def cell_result(message: dict[str, Any], limit: int) -> CellResult:
    """The :class:`CellResult` a ``result`` message describes, each text cut to ``limit``
    (``timed_out``, ``duration_s`` and ``answer_changed`` are left for the caller to set)."""
    error = message.get("error")
    return CellResult(
        stdout=cut(_text(message, "stdout"), limit),
        stderr=cut(_text(message, "stderr"), limit),
        error=cut(error, limit) if isinstance(error, str) else None,
        answer=_answer_of(message.get("answer")),
        answer_changed=message.get("answer_changed") is True,
        restored=_restored_names(message.get("restored")),
    )


def _restored_names(value: Any) -> list[str]:
    """The scaffold names a cell overwrote (the worker restored them): at most
    ``_MAX_RESTORED`` strings of at most ``_MAX_NAME`` characters, with a note of the rest."""
    names = [v[:_MAX_NAME] for v in value if isinstance(v, str)] if isinstance(value, list) else []
    if len(names) > _MAX_RESTORED:
        names = [*names[: _MAX_RESTORED - 1], f"... and {len(names) - _MAX_RESTORED + 1:,} more"]
    return names


def _parse_item(item: Any, kind: str) -> SubcallItem | str:
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
        return "Error: invalid sub-call item"
    system, model = item.get("system"), item.get("model")
    if not isinstance(system, str | None) or not isinstance(model, str | None):
        return "Error: invalid sub-call item"
    context = item.get("context") if kind == "rlm" else None
    choices = notes = None
    if kind == "llm" and item.get("choices") is not None:
        checked = check_choices(item["choices"])
        if isinstance(checked, str):
            return f"[error: llm_query: {checked}]"
        choices = checked
        if item.get("choice_notes") is not None:
            described = check_notes(item["choice_notes"], len(choices))
            if isinstance(described, str):
                return f"[error: llm_query: {described}]"
            notes = described
    return SubcallItem(
        prompt=item["prompt"],
        system=system,
        model=model,
        context=context,
        choices=choices,
        choice_notes=notes,
    )


def _parse_tool_call(item: Any) -> SubcallItem | str:
    """A ``tool`` item ``{"name", "arguments"}``, carried as ``SubcallItem(prompt=name,
    context=arguments)``; the broker checks the name and the arguments against the run's tools."""
    if not isinstance(item, dict):
        return "[error: invalid tool call]"
    name, arguments = item.get("name"), item.get("arguments")
    if not isinstance(name, str) or not name or len(name) > _MAX_TOOL_NAME:
        return "[error: invalid tool call: bad tool name]"
    if not isinstance(arguments, dict):
        return f"[error: {name}: arguments must be a dict]"
    return SubcallItem(prompt=name, context=arguments)


def _as_answers(reply: Any, count: int) -> list[str]:
    values = reply if isinstance(reply, list) else []
    answers = [v if isinstance(v, str) else f"Error: bad sub-call answer {v!r:.80}" for v in values]
    return answers[:count] + ["Error: the sub-call gave no answer"] * (count - len(answers))


def _text(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    return value if isinstance(value, str) else ""


def cut(text: str, limit: int) -> str:
    """Head and tail of ``text`` (the worker cuts already; this guards against a rogue one)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def _answer_of(value: Any) -> AnswerState:
    if not isinstance(value, dict):
        return AnswerState()
    content = value.get("content")
    content = content[:_MAX_ANSWER_CHARS] if isinstance(content, str) else ""
    as_json = value.get("value")
    as_json = as_json if isinstance(as_json, str) and len(as_json) <= _MAX_ANSWER_CHARS else None
    return AnswerState(
        content=content,
        ready=value.get("ready") is True,
        value=as_json,
        sources=_spans_of(value.get("sources")),
    )


def _spans_of(value: Any) -> tuple[SourceSpan, ...]:
    if not isinstance(value, list):
        return ()
    spans = []
    for item in value[:MAX_SOURCES]:
        if not isinstance(item, dict):
            continue
        fields = {
            key: item[key] for key in _SPAN_FIELDS if key in item and _SPAN_FIELDS[key](item[key])
        }
        spans.append(SourceSpan(**fields))
    return tuple(spans)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 4096


_SPAN_FIELDS = {
    "source": _is_name,
    "start": _is_int,
    "end": _is_int,
    "path": _is_name,
    "line_start": _is_int,
    "line_end": _is_int,
}
