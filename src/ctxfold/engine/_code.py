"""Finding the code to run in a root model's reply."""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_CODE_TAGS = {"python", "py", "python3", "repl"}


def extract_code(reply: str) -> list[str]:
    """The code blocks of a reply, in order.

    Blocks fenced as ``python``/``py``/``repl`` count. When there are none, an untagged fence
    whose body parses as Python counts too (small models often drop the tag). A fence left open
    at the end of the reply (output cut by ``max_tokens``) runs to the end.
    """
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(reply)]
    tagged = [body for tag, body in blocks if tag in _CODE_TAGS]
    if tagged:
        return [b for b in tagged if b.strip()]
    return [body for tag, body in blocks if not tag and body.strip() and _parses(body)]


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True
