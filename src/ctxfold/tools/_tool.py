"""The :class:`Tool` value and the conversion of user functions into tools."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ctxfold.errors import CtxfoldError
from ctxfold.tools._schema import function_schema

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class Tool:
    """A function a sub-LLM may call: ``function(**arguments)`` runs on the host, never in the
    sandbox, within ``timeout`` seconds; its return value (``str``, or anything JSON-able) is
    shown to the sub-LLM, cut to a few thousand characters.

    Args:
        name: the name the sub-LLM calls it by (a Python identifier).
        description: one or two lines on what it does and when to use it.
        parameters: a JSON schema (``{"type": "object", "properties": ..., "required": ...}``).
        function: the Python callable.
        timeout: seconds one call may take before the sub-LLM gets a timeout error instead.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any] = field(repr=False)
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise CtxfoldError(f"tool name must be an identifier, got {self.name!r}")
        if not callable(self.function):
            raise CtxfoldError(f"tool {self.name!r}: function is not callable")
        if not self.timeout > 0:
            raise CtxfoldError(f"tool {self.name!r}: timeout must be > 0")

    @classmethod
    def from_function(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float = 30.0,
    ) -> Tool:
        """A tool from a plain function: its type hints and docstring give the schema."""
        summary, parameters = function_schema(function)
        return cls(
            name=name or str(getattr(function, "__name__", "tool")),
            description=description if description is not None else summary,
            parameters=parameters,
            function=function,
            timeout=timeout,
        )

    def signature(self) -> str:
        """A short call form, e.g. ``search(query, k=5)``, for prompts."""
        required = set(self.parameters.get("required", []))
        parts = []
        for pname, schema in self.parameters.get("properties", {}).items():
            if pname in required or "default" not in schema:
                parts.append(pname)
            else:
                parts.append(f"{pname}={schema['default']!r}")
        return f"{self.name}({', '.join(parts)})"


def as_tools(items: Iterable[Any] | None) -> tuple[Tool, ...]:
    """Tools from a mix of :class:`Tool` objects, objects with ``as_tool()`` and functions.

    Raises:
        CtxfoldError: an item is none of those, or two tools share a name.
    """
    tools: list[Tool] = []
    for item in items or ():
        if isinstance(item, Tool):
            tools.append(item)
        elif hasattr(item, "as_tool"):
            tools.append(item.as_tool())
        elif callable(item):
            tools.append(Tool.from_function(item))
        else:
            raise CtxfoldError(f"tools must be functions or ctxfold.tools.Tool, got {item!r}")
    names = [t.name for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CtxfoldError(f"two tools share a name: {', '.join(duplicates)}")
    return tuple(tools)
