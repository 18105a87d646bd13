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
    "MAX_PACK_ITEM_CHARS",
    "check_choices",
    "check_notes",
    "choice_grammar",
    "choice_instruction",
    "choice_max_tokens",
    "choice_prompt",
    "match_choice",
    "pack_grammar",
    "pack_max_tokens",
    "pack_prompt",
    "packable",
    "read_pack",
    "retry_instruction",
]

MAX_CHOICES = 64
"""At most this many choices in one call."""

MAX_CHOICE_CHARS = 200
"""At most this many characters in one choice."""

MAX_NOTE_CHARS = 300
"""At most this many characters in one choice's description (``choices={"spam": "ads, ..."}``)."""

MAX_PACK_ITEM_CHARS = 600
"""A text of at most this many characters on one line may share a sub-call with others."""

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
    return _notes_head(choices, notes) + text + choice_instruction(_order(choices, text))


def _notes_head(choices: Sequence[str], notes: Sequence[str] | None) -> str:
    if notes is None:
        return ""
    listed = "\n".join(
        f"- {c}: {n}" if n.strip() else f"- {c}" for c, n in zip(choices, notes, strict=True)
    )
    return f"Choices:\n{listed}\n\n"


def packable(text: str) -> bool:
    """Whether ``text`` is small enough to share one sub-call with others: one line of at most
    ``MAX_PACK_ITEM_CHARS`` characters."""
    return 0 < len(text) <= MAX_PACK_ITEM_CHARS and "\n" not in text and "\r" not in text


def pack_prompt(
    texts: Sequence[str], choices: Sequence[str], notes: Sequence[str] | None = None
) -> str:
    """One prompt asking for a choice for each of ``texts`` (each :func:`packable`), numbered
    from 1; the reply is read back with :func:`read_pack`.

    What every pack of a batch shares comes first, for a server's prompt cache: the descriptions
    of the choices, then the instruction. The choices are listed in an order drawn from the
    texts, as :func:`choice_prompt` does, and once more after the items, nearest to the reply.
    """
    count = len(texts)
    order = _order(choices, "\n".join(texts))
    listed = _listed(order)
    items = "\n".join(f"{i}. {text.strip()}" for i, text in enumerate(texts, 1))
    return (
        f"{_notes_head(choices, notes)}Give each of the {count} numbered items below exactly "
        f'one of: {listed}.\n\n{items}\n\nReply with {count} lines, "1: <answer>" to '
        f'"{count}: <answer>", one per item in order; each answer is exactly one of: {listed}.'
    )


def pack_grammar(count: int, choices: Sequence[str]) -> str:
    """A llama.cpp GBNF grammar whose only sentences are ``count`` numbered lines, each a
    choice: the reply :func:`pack_prompt` asks for."""
    lines = " ".join(f'"{i}: " choice "\\n"' for i in range(1, count + 1))
    return f"root ::= {lines}\nchoice ::= " + " | ".join(_gbnf_literal(c) for c in choices)


def pack_max_tokens(count: int, choices: Sequence[str]) -> int:
    """An output bound for ``count`` numbered choices."""
    return count * (6 + max(len(c) for c in choices) // 2) + 16


_PACK_LINE = re.compile(r"^\W*(\d{1,4})\s*[:.)\]-]\s*(.*)$")


def read_pack(reply: str, count: int, choices: Sequence[str]) -> list[str | None]:
    """The choice the reply to :func:`pack_prompt` gives for each of ``count`` items, in order;
    ``None`` for an item whose line is missing, names no choice (or several), or comes twice."""
    found: dict[int, str | None] = {}
    for line in reply.splitlines():
        match = _PACK_LINE.match(line.strip())
        if match is None:
            continue
        number = int(match[1])
        if 1 <= number <= count:
            chosen = match_choice(match[2], choices)
            found[number] = None if number in found else chosen
    return [found.get(number) for number in range(1, count + 1)]


def _order(choices: Sequence[str], text: str) -> list[str]:
    order = list(choices)
    random.Random(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()).shuffle(order)
    return order


def choice_instruction(choices: Sequence[str]) -> str:
    """The line added after the prompt, listing ``choices`` in the order given."""
    return f"\n\nAnswer with exactly one of: {_listed(choices)}."


def _listed(choices: Sequence[str]) -> str:
    quoted = any("," in c for c in choices)
    return ", ".join(json.dumps(c, ensure_ascii=False) if quoted else c for c in choices)


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
