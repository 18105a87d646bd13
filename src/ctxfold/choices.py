"""Sub-calls that must answer with one of a fixed set of choices: ``llm_query(..., choices=[...])``.

A small model asked to label a line often answers with the whole list, a sentence, or a near
miss. With ``choices`` the host (never the sandbox) adds one instruction to the prompt, asks a
client that can constrain decoding to emit only a choice, reads the reply back to one choice, and
asks once more when it names none. Code in the sandbox gets a choice exactly as it gave it, or an
error text it can count.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence

__all__ = [
    "MAX_CHOICES",
    "MAX_CHOICE_CHARS",
    "MAX_NOTE_CHARS",
    "check_choices",
    "check_notes",
    "choice_grammar",
    "choice_instruction",
    "choice_max_tokens",
    "choice_prompt",
    "match_choice",
    "retry_instruction",
]

MAX_CHOICES = 64
"""At most this many choices in one call."""

MAX_CHOICE_CHARS = 200
"""At most this many characters in one choice."""

MAX_NOTE_CHARS = 300
"""At most this many characters in one choice's description (``choices={"spam": "ads, ..."}``)."""

_EDGE = " \t\r\n\"'`*.,:;!?()[]{}<>"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_choices(choices: object) -> tuple[str, ...] | str:
    """The choices as a tuple, or a one-line reason why they cannot be used."""
    if isinstance(choices, str | bytes) or not isinstance(choices, list | tuple):
        return f"choices must be a list of str, got {type(choices).__name__}"
    if not 2 <= len(choices) <= MAX_CHOICES:
        return f"choices must hold 2 to {MAX_CHOICES} items, got {len(choices)}"
    seen: set[str] = set()
    for choice in choices:
        if not isinstance(choice, str):
            return f"each choice must be a str, got {type(choice).__name__}"
        if not choice.strip() or len(choice) > MAX_CHOICE_CHARS or _CONTROL.search(choice):
            return (
                f"each choice must be 1 to {MAX_CHOICE_CHARS} characters on one line, "
                f"got {choice[:40]!r}"
            )
        key = _norm(choice)
        if not key:
            return f"each choice needs a letter or digit, got {choice!r}"
        if key in seen:
            return f"choices must differ (ignoring case), {choice!r} is there twice"
        seen.add(key)
    return tuple(choices)


def check_notes(notes: object, count: int) -> tuple[str, ...] | str:
    """The descriptions of ``count`` choices as a tuple, or a one-line reason why they cannot be
    used: one str per choice, each at most ``MAX_NOTE_CHARS`` characters on one line."""
    if not isinstance(notes, list | tuple) or len(notes) != count:
        return "choices given as a dict need one description (a str) per choice"
    for note in notes:
        if not isinstance(note, str):
            return f"each choice's description must be a str, got {type(note).__name__}"
        if len(note) > MAX_NOTE_CHARS or _CONTROL.search(note):
            return (
                f"each choice's description must be at most {MAX_NOTE_CHARS} characters on one "
                f"line, got {note[:40]!r}"
            )
    return tuple(notes)


def choice_prompt(text: str, choices: Sequence[str], notes: Sequence[str] | None = None) -> str:
    """The prompt sent for ``text`` with ``choices``: the text, then the instruction (small models
    label better in that order). Descriptions of the choices go first, as ``Choices:`` lines, so
    that the calls of a batch share one prompt head, which a server's prompt cache reuses.

    The instruction lists the choices in an order drawn from ``text`` (the same text always gets
    the same order): small models over-pick the choice listed first, and a fixed order would add
    that excess to one choice's count in every call of a batch.
    """
    prompt = text + choice_instruction(_order(choices, text))
    if notes is None:
        return prompt
    listed = "\n".join(
        f"- {c}: {n}" if n.strip() else f"- {c}" for c, n in zip(choices, notes, strict=True)
    )
    return f"Choices:\n{listed}\n\n{prompt}"


def _order(choices: Sequence[str], text: str) -> list[str]:
    order = list(choices)
    random.Random(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()).shuffle(order)
    return order


def choice_instruction(choices: Sequence[str]) -> str:
    """The line added after the prompt, listing ``choices`` in the order given."""
    quoted = any("," in c for c in choices)
    listed = ", ".join(json.dumps(c, ensure_ascii=False) if quoted else c for c in choices)
    return f"\n\nAnswer with exactly one of: {listed}."


def retry_instruction(choices: Sequence[str]) -> str:
    """The follow-up message when a reply named none of the choices."""
    listed = "\n".join(f"- {c}" for c in choices)
    return f"Reply with only one of these, exactly as written, and nothing else:\n{listed}"


def choice_max_tokens(choices: Sequence[str]) -> int:
    """An output bound for one choice and a few words around it."""
    return min(256, 16 + max(len(c) for c in choices) // 2)


def choice_grammar(choices: Sequence[str]) -> str:
    """A llama.cpp GBNF grammar whose only sentences are the choices."""
    return "root ::= " + " | ".join(_gbnf_literal(c) for c in choices)


def match_choice(reply: str, choices: Sequence[str]) -> str | None:
    """The one choice ``reply`` gives, or ``None`` when it gives none or several.

    In order: the reply is a choice (ignoring case, spaces, quotes and end punctuation); it
    starts with a choice (the longest) and names no other; it is the start of exactly one choice
    (three characters at least); exactly one choice appears in it as whole words.
    """
    text = _norm(reply)
    if not text:
        return None
    keyed = {choice: _norm(choice) for choice in choices}
    for choice, key in keyed.items():
        if text == key:
            return choice
    named = {c for c, key in keyed.items() if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", text)}
    # a choice found only inside a longer found choice ("spam" in "spam filter") is not named
    named = {c for c in named if not any(c != o and keyed[c] in keyed[o] for o in named)}
    starts = [(len(key), c) for c, key in keyed.items() if _starts_with(text, key)]
    if starts:
        first = max(starts)[1]
        return first if named <= {first} else None
    if len(text) >= 3:
        prefix_of = [c for c, key in keyed.items() if key.startswith(text)]
        if len(prefix_of) == 1:
            return prefix_of[0]
    return named.pop() if len(named) == 1 else None


def _norm(text: str) -> str:
    return " ".join(text.casefold().split()).strip(_EDGE)


def _starts_with(text: str, key: str) -> bool:
    return text.startswith(key) and (len(text) == len(key) or not text[len(key)].isalnum())


def _gbnf_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
