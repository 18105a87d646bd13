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
    answer_note: str = "",
) -> str:
    """The root system prompt of a profile (``"concise"`` for strong models, ``"small"``).

    ``sub_calls=False`` leaves out the sub-LLM functions (a run with ``Budget(depth=0)``).
    ``answer_note`` (see :func:`answer_note`) ends it.
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
    ) + (f"\n\n{answer_note}" if answer_note else "")


def answer_note(*, schema: str | None = None, cite: str | None = None) -> str:
    """What the system prompt says about the answer's form: ``schema`` (a JSON schema, shown)
    for a typed answer; ``cite`` (``"chars"`` for a text input, ``"lines"`` for a folder) for
    how to cite the input."""
    notes = []
    if cite == "chars":
        notes.append(CITE_CHARS)
    elif cite == "lines":
        notes.append(CITE_LINES)
    if schema is not None:
        notes.append(TYPED_ANSWER.format(schema=schema))
    return "\n".join(notes)


CITE_CHARS = (
    "When your answer states facts from the input, cite them: `cite(start, end)` (character "
    "offsets into `context`, e.g. from `m.start()`, `m.end()` of a regex match) returns the quoted "
    'text and adds the span to `answer["sources"]`.'
)
CITE_LINES = (
    "When your answer states facts from the input, cite them: `cite(path, first_line, "
    "last_line)` (a file of `context`, lines counted from 1) returns the quoted lines and adds "
    'them to `answer["sources"]`.'
)
TYPED_ANSWER = (
    'The answer is a value, not text: set `answer["content"]` to a Python value (dict, list, '
    'number ...) that fits this JSON schema, then set `answer["ready"] = True`: {schema}'
)
SCHEMA_MISMATCH = (
    "\n[ctxfold] The answer does not fit the required schema, so it is not final yet:\n"
    '{errors}\nFix answer["content"] and set answer["ready"] = True again.'
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


def task_message(question: str, descriptions: list[tuple[str, str]], earlier: str = "") -> str:
    """The first user message: a fixed-size description of each input, what earlier questions
    of a session found (``earlier``), then the question.

    The question comes last, nearest to the reply: small models otherwise take their search words
    from the input's preview.
    """
    lines = [f"`{name}`: {description}" for name, description in descriptions]
    if len(descriptions) > 1:
        lines.append("(`context` is `context_0`.)")
    if earlier:
        lines += ["", EARLIER_HEAD, earlier]
    lines += ["", f"Question: {question}", "", "Start by looking at the data with code."]
    return "\n".join(lines)


EARLIER_HEAD = (
    "Earlier in this session (the REPL kept its variables; `answers` lists every answer given, "
    'as dicts with "question", "content", "ready"):'
)

__all__ = [
    "ELIDED",
    "FINAL_REQUEST",
    "NO_CODE",
    "PROFILES",
    "REPEATED_CODE",
    "SCHEMA_MISMATCH",
    "Demonstration",
    "Profile",
    "answer_note",
    "demonstration",
    "demonstrations",
    "describe_cells",
    "pick_demonstration",
    "profile",
    "profile_for",
    "system_prompt",
    "task_message",
]
