"""Tools called by the root model's own code: the CodeAct + BM25 baseline of ``ctxfold bench``.

ctxfold gives tools to sub-LLMs only. This baseline, :class:`CodeActTools`, is an engine
extension (:class:`ctxfold.engine.Extension`) that gives them to the root model's code instead,
and refuses sub-LLM calls: each tool becomes a sandbox function of the same name
(``search("..." , k=5)``) that sends a ``tool`` request over the worker's channel. The broker
hands it to :meth:`CodeActTools.call`, which runs the tool on the host in a thread with the
tool's timeout. Everything the sandbox sends is hostile: only the run's named tools can be
reached, arguments must match the tool's JSON schema, and their sizes are bounded. A failure comes
back to the code as an ``[error: ...]`` string, never as an exception in the host.
"""

from __future__ import annotations

import builtins
import json
import keyword
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from ctxfold.errors import CtxfoldError
from ctxfold.models import Message
from ctxfold.tools import Tool, run_tool

MAX_STRING = 10_000  # characters of one string argument
MAX_ARGUMENTS = 100_000  # characters of all the arguments of one call, as JSON
RESULT_CHARS = 50_000  # characters of a result handed back to the code (the rest is cut)
_MAX_INT = 2**53
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}
_SCAFFOLD = frozenset(
    {
        "context",
        "answer",
        "llm_query",
        "llm_batch",
        "rlm_query",
        "rlm_batch",
        "FINAL",
        "FINAL_VAR",
        "budget",
        "SHOW_VARS",
    }
)
_CONTEXT_N = re.compile(r"^context_\d+$")


def check_root_tools(tools: Sequence[Tool]) -> tuple[Tool, ...]:
    """``tools`` as a tuple, after checking their names can be sandbox functions.

    Raises:
        CtxfoldError: a name is a keyword, a builtin, a scaffold name, or used twice.
    """
    names: set[str] = set()
    for tool in tools:
        name = tool.name
        if (
            keyword.iskeyword(name)
            or hasattr(builtins, name)
            or name in _SCAFFOLD
            or _CONTEXT_N.match(name)
            or name.startswith("_")
        ):
            raise CtxfoldError(f"tool name {name!r} cannot be a sandbox function")
        if name in names:
            raise CtxfoldError(f"two tools share the name {name!r}")
        names.add(name)
    return tuple(tools)


def code_tools_text(tools: Sequence[Tool]) -> str:
    """The root prompt's lines on the functions its code may call (``""`` when none)."""
    lines = []
    for tool in tools:
        description = " ".join(tool.description.split())
        lines.append(f"- `{tool.signature()} -> str`: {description}".rstrip(": "))
    return "".join(f"{line}\n" for line in lines)


def setup_code(tools: Sequence[Tool]) -> str:
    """The set-up cell that defines the tools' functions in the sandbox (see ``_worker.py``); the
    engine runs it at start and after every worker restart (``sandbox/_setup.py``)."""
    specs = []
    for tool in tools:
        properties = tool.parameters.get("properties", {})
        doc = [f"{tool.signature()} -> str", "", tool.description]
        doc += [
            f"    {name}: {schema['description']}"
            for name, schema in properties.items()
            if schema.get("description")
        ]
        specs.append(
            {
                "name": tool.name,
                "params": list(properties),
                "required": list(tool.parameters.get("required", [])),
                "doc": "\n".join(doc).strip(),
            }
        )
    return f"_define_tools({json.dumps(specs, ensure_ascii=True)!r})"


def check_arguments(tool: Tool, arguments: Any) -> dict[str, Any] | str:
    """``arguments`` if they fit ``tool``'s schema and the size bounds, else what is wrong."""
    if not isinstance(arguments, dict):
        return "arguments must be a dict"
    try:
        size = len(json.dumps(arguments, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return "arguments must be plain JSON values (finite numbers, not too deeply nested)"
    if size > MAX_ARGUMENTS:
        return f"arguments too large ({size:,} characters; at most {MAX_ARGUMENTS:,})"
    properties: dict[str, Any] = tool.parameters.get("properties", {})
    unknown = [str(k)[:40] for k in arguments if k not in properties]
    if unknown:
        return f"unexpected argument {unknown[0]!r}; it takes: {', '.join(properties) or 'none'}"
    missing = [k for k in tool.parameters.get("required", []) if k not in arguments]
    if missing:
        return f"missing argument {missing[0]!r}"
    checked: dict[str, Any] = {}
    for name, value in arguments.items():
        fitted = _fit(value, properties[name])
        if isinstance(fitted, _Wrong):
            return f"argument {name!r} {fitted.why}"
        checked[name] = fitted
    return checked


class _Wrong:
    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def _fit(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` as ``schema`` wants it (a whole float becomes an int), or a :class:`_Wrong`."""
    if isinstance(value, str) and len(value) > MAX_STRING:
        return _Wrong(f"is too long ({len(value):,} characters; at most {MAX_STRING:,})")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INT:
        return _Wrong("is out of range")
    if "enum" in schema and value not in schema["enum"]:
        return _Wrong(f"must be one of {schema['enum']!r}")
    if "anyOf" in schema:
        options = [_fit(value, option) for option in schema["anyOf"]]
        good = [o for o in options if not isinstance(o, _Wrong)]
        return good[0] if good else _Wrong("has the wrong type")
    kind = schema.get("type")
    if not isinstance(kind, str) or kind not in _TYPES:
        return value  # no type in the schema: any JSON value (already bounded in size)
    if kind in ("integer", "number") and isinstance(value, float) and value.is_integer():
        value = int(value) if kind == "integer" else value
    if isinstance(value, bool) and kind != "boolean":
        return _Wrong(f"must be of type {kind}, not bool")
    if not isinstance(value, _TYPES[kind]):
        return _Wrong(f"must be of type {kind}, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    for name, types in _TYPES.items():
        if isinstance(value, types) and not (isinstance(value, bool) and name != "boolean"):
            return name
    return "null" if value is None else type(value).__name__


def call_root_tool(
    tools: Sequence[Tool], name: str, arguments: Any
) -> tuple[str, str | None, dict[str, Any]]:
    """Run the tool called ``name`` (one of ``tools``, nothing else) with ``arguments``.

    Returns ``(result, error or None, the arguments as checked)``; never raises.
    """
    by_name = {t.name: t for t in tools}
    tool = by_name.get(name)
    if tool is None:
        known = ", ".join(by_name) if by_name else "none in this run"
        return "", f"no tool named {name[:64]!r}; the tools are: {known}", {}
    checked = check_arguments(tool, arguments)
    if isinstance(checked, str):
        return "", checked, {}
    result, error = run_tool(tool, checked, RESULT_CHARS)
    return result, error, checked


def preview_arguments(arguments: Any, limit: int = 200) -> dict[str, Any]:
    """A small copy of a call's arguments for the trace (long strings and big values cut)."""
    if not isinstance(arguments, dict):
        return {}
    preview: dict[str, Any] = {}
    for key, value in list(arguments.items())[:10]:
        if isinstance(value, str | int | float | bool) or value is None:
            small = value[:limit] if isinstance(value, str) else value
        else:
            try:
                small = json.dumps(value, allow_nan=False)[:limit]
            except (TypeError, ValueError, RecursionError):
                small = "<not JSON>"
        preview[str(key)[:64]] = small
    return preview


def demo_fits(tools: Sequence[Tool]) -> bool:
    """Whether the CodeAct demonstration (which calls ``search`` and ``read``) fits ``tools``."""
    return {"search", "read"} <= {t.name for t in tools}


@cache
def _text(name: str) -> str:
    return resources.files("ctxfold.bench.prompts").joinpath(name).read_text(encoding="utf-8")


def codeact_system_prompt(
    profile: str, *, context_summary: str, output_limit: int, code_tools: str
) -> str:
    """The CodeAct root system prompt of a profile: the functions in ``code_tools`` (lines from
    :func:`code_tools_text`), no sub-LLMs."""
    name = "codeact_small.md" if profile == "small" else "codeact.md"
    return Template(_text(name)).substitute(
        context_summary=context_summary, output_limit=f"{output_limit:,}", code_tools=code_tools
    )


class CodeActTools:
    """The CodeAct baseline as an engine extension: ``tools`` are functions of the root model's
    code, answered on the host; sub-LLM calls are refused."""

    refuses_subcalls: str | None = "sub-calls are disabled in this run (the code has tools instead)"

    def __init__(self, tools: Sequence[Tool]) -> None:
        self.tools = check_root_tools(tools)

    def setup_code(self) -> str | None:
        return setup_code(self.tools)

    def system_prompt(self, profile: str, *, context_summary: str, output_limit: int) -> str:
        return codeact_system_prompt(
            profile,
            context_summary=context_summary,
            output_limit=output_limit,
            code_tools=code_tools_text(self.tools),
        )

    def demonstration(self, profile: str) -> list[Message] | None:
        """The small profile's CodeAct exchange, when the tools are the ones it calls."""
        if profile != "small" or not demo_fits(self.tools):
            return None
        turns: list[Message] = json.loads(_text("demo_codeact_small.json"))
        return turns

    def call(self, name: str, arguments: Any) -> tuple[str, str | None, dict[str, Any]]:
        result, error, checked = call_root_tool(self.tools, name, arguments)
        return result, error, preview_arguments(checked or arguments)
