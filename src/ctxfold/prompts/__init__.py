"""Root-model prompts (package data) and the small functions that fill them in."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template

from ctxfold.models import Message
from ctxfold.prompts._feedback import describe_cells
from ctxfold.prompts._profile import (
    ELIDED,
    FINAL_REQUEST,
    NO_CODE,
    PROFILES,
    REPEATED_CODE,
    Profile,
    profile,
    profile_for,
)


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


def demonstration(profile: str, *, question: str = "", sub_calls: bool = True) -> list[Message]:
    """Prior chat turns that show a worked exchange (only the ``small`` profile has them).

    Small models copy the demonstration they are shown, so the one shown is the one nearest to
    ``question`` (see :func:`pick_demonstration`).
    """
    if profile != "small":
        return []
    return pick_demonstration(question, sub_calls=sub_calls).turns


@dataclass(frozen=True, slots=True)
class Demonstration:
    """A worked exchange for small root models, shown as prior chat turns."""

    name: str
    keywords: tuple[str, ...]  # words of a question that select it
    needs_subcalls: bool  # it calls llm_batch: not shown when a run has no sub-LLMs
    turns: list[Message]


@cache
def demonstrations() -> tuple[Demonstration, ...]:
    """The small profile's demonstrations; the first is the default."""
    return tuple(
        Demonstration(d["name"], tuple(d["keywords"]), d["needs_subcalls"], d["turns"])
        for d in json.loads(_text("demos_small.json"))
    )


def pick_demonstration(question: str, *, sub_calls: bool = True) -> Demonstration:
    """The demonstration whose keywords appear most in ``question`` (ties: the earlier one)."""
    text = question.lower()
    usable = [d for d in demonstrations() if sub_calls or not d.needs_subcalls]
    return max(usable, key=lambda d: sum(1 for k in d.keywords if _has_word(text, k)))


def _has_word(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", text) is not None


def task_message(question: str, descriptions: list[tuple[str, str]]) -> str:
    """The first user message: a fixed-size description of each input, then the question.

    The question comes last, nearest to the reply: small models otherwise take their search words
    from the input's preview.
    """
    lines = [f"`{name}`: {description}" for name, description in descriptions]
    if len(descriptions) > 1:
        lines.append("(`context` is `context_0`.)")
    lines += ["", f"Question: {question}", "", "Start by looking at the data with code."]
    return "\n".join(lines)


__all__ = [
    "ELIDED",
    "FINAL_REQUEST",
    "NO_CODE",
    "PROFILES",
    "REPEATED_CODE",
    "Demonstration",
    "Profile",
    "demonstration",
    "demonstrations",
    "describe_cells",
    "pick_demonstration",
    "profile",
    "profile_for",
    "system_prompt",
    "task_message",
]
