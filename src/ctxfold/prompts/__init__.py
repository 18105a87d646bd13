"""Root-model prompts (package data) and the small functions that fill them in."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from string import Template

from ctxfold.models import Message

PROFILES = ("concise", "small")


@cache
def _text(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def system_prompt(
    profile: str,
    *,
    context_summary: str,
    output_limit: int,
    sub_window: int,
    sub_calls: bool = True,
    tools_note: str = "",
) -> str:
    """The root system prompt of a profile (``"concise"`` for strong models, ``"small"``).

    ``sub_calls=False`` leaves out the sub-LLM functions (a run with ``Budget(depth=0)``).
    """
    name = "system_small.md" if profile == "small" else "system.md"
    snippets = json.loads(_text("subcalls.json"))[profile]
    on = "" if sub_calls else "off_"
    template = Template(_text(name)).safe_substitute(
        subcall_lines=snippets[f"{on}lines"], subcall_rule=snippets[f"{on}rule"]
    )
    return Template(template).substitute(
        context_summary=context_summary,
        output_limit=f"{output_limit:,}",
        sub_window=f"{sub_window:,}",
        tools_note=f"\n{tools_note}\n" if tools_note else "",
    )


def demonstration(profile: str) -> list[Message]:
    """Prior chat turns that show a worked exchange (only the ``small`` profile has them)."""
    if profile != "small":
        return []
    turns: list[Message] = json.loads(_text("demo_small.json"))
    return turns


def task_message(question: str, descriptions: list[tuple[str, str]]) -> str:
    """The first user message: the question and a fixed-size description of each input."""
    lines = [f"Question: {question}", ""]
    lines += [f"`{name}`: {description}" for name, description in descriptions]
    if len(descriptions) > 1:
        lines.append("(`context` is `context_0`.)")
    lines += ["", "Start by looking at the data with code."]
    return "\n".join(lines)


NO_CODE = (
    "Your reply had no ```python code block, so nothing ran. Reply with Python code in a "
    '```python block. To finish, set answer["content"] and then answer["ready"] = True in code.'
)

FINAL_REQUEST = (
    "The run's budget is spent ({reason}). Reply now with your best final answer to the question "
    "as plain text, without code."
)
