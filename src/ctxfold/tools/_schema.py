"""JSON schemas for plain Python functions: type hints give the types, the docstring the text.

The docstring's first line becomes the tool's description; an ``Args:`` section (Google style)
gives each parameter's description. Supported hints: ``str``, ``int``, ``float``, ``bool``,
``list[...]``, ``dict[...]``, ``Optional[...]`` / ``X | None`` and ``Literal[...]``.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from ctxfold.errors import CtxfoldError

_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SECTION = re.compile(
    r"^\s*(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):\s*$"
)


def type_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of one type hint (``{}`` for ``Any`` or an unannotated parameter)."""
    if hint is inspect.Parameter.empty or hint is Any:
        return {}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is list or hint is tuple:
        return {"type": "array"}
    if hint is dict:
        return {"type": "object"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        values = list(args)
        kinds = {_SCALARS.get(type(v)) for v in values}
        schema: dict[str, Any] = {"enum": values}
        if len(kinds) == 1 and None not in kinds:
            schema["type"] = kinds.pop()
        return schema
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return type_schema(options[0])
        return {"anyOf": [type_schema(a) for a in options]}
    if origin in (list, tuple, set, frozenset) or (
        origin is not None and getattr(origin, "__name__", "") in ("Sequence", "Iterable")
    ):
        items = [a for a in args if a is not Ellipsis]
        return {"type": "array", "items": type_schema(items[0])} if items else {"type": "array"}
    if origin is dict or (origin is not None and getattr(origin, "__name__", "") == "Mapping"):
        return {"type": "object"}
    raise CtxfoldError(f"unsupported type hint for a tool parameter: {hint!r}")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """``(first line, {parameter: description})`` from a Google-style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary = lines[0].strip() if lines else ""
    params: dict[str, str] = {}
    in_args, current, indent = False, "", 0
    for line in lines[1:]:
        section = _SECTION.match(line)
        if section:
            in_args = section.group(1) in ("Args", "Arguments", "Parameters")
            current = ""
            continue
        if not in_args or not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        match = _ARG_LINE.match(line)
        if match and (not current or width <= indent):
            current, indent = match.group(1).lstrip("*"), width
            params[current] = match.group(2).strip()
        elif current:
            params[current] = f"{params[current]} {line.strip()}".strip()
    return summary, params


def function_schema(function: Callable[..., Any]) -> tuple[str, dict[str, Any]]:
    """``(description, parameters schema)`` of a function, from its signature and docstring."""
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {}
    summary, docs = parse_docstring(inspect.getdoc(function))
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in signature.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        schema = dict(type_schema(hints.get(name, param.annotation)))
        if docs.get(name):
            schema["description"] = docs[name]
        if param.default is param.empty:
            required.append(name)
        elif _jsonable(param.default):
            schema["default"] = param.default
        properties[name] = schema
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return summary, parameters


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
