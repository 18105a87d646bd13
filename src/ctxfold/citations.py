"""Citations: where in the input an answer came from, quoted by the host from the input itself.

In the REPL, ``cite(start, end)`` (characters of a text input) or ``cite(path, first, last)``
(lines of a file of a folder input) adds a span to ``answer["sources"]``. When the run ends,
:func:`resolve` checks every span against the inputs on the host and reads its quote from the
input's own file, so a citation never carries text the model made up. A span that does not fit
its input is left out.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ctxfold.context import PreparedContext
from ctxfold.sandbox import SourceSpan

MAX_QUOTE_CHARS = 20_000  # a quote longer than this is cut (the span stays as cited)
_CHUNK = 1 << 20
_AROUND_CHARS = 300
_AROUND_LINES = 3


@dataclass(frozen=True, slots=True)
class Citation:
    """One cited span with its exact text, read from the input by the host.

    ``source`` is the input's variable name (``context``, ``context_1`` ...). A text input's span
    has ``start``/``end`` (characters, ``end`` excluded); a folder input's has ``path`` and
    ``line_start``/``line_end`` (from 1, both included).
    """

    source: str
    quote: str
    start: int | None = None
    end: int | None = None
    path: str | None = None
    line_start: int | None = None
    line_end: int | None = None
    # The input around the span (a few hundred characters, or three lines, each side), to
    # show the quote in its place.
    before: str = ""
    after: str = ""

    @property
    def where(self) -> str:
        """``path:12-14`` or ``context[120:180]``, for people to read."""
        if self.path is not None:
            lines = f"{self.line_start}" + (
                f"-{self.line_end}" if self.line_end != self.line_start else ""
            )
            return f"{self.path}:{lines}"
        return f"{self.source}[{self.start}:{self.end}]"


def resolve(spans: Sequence[SourceSpan], inputs: Sequence[PreparedContext]) -> list[Citation]:
    """The spans that fit their inputs, each quoted from the input; duplicates once."""
    by_name = {c.name: c for c in inputs}
    if inputs:
        by_name.setdefault("context", inputs[0])
    seen: set[SourceSpan] = set()
    citations = []
    for span in spans:
        if span in seen:
            continue
        seen.add(span)
        found = by_name.get(span.source)
        citation = _quoted(span, found) if found is not None else None
        if citation is not None:
            citations.append(citation)
    return citations


def _quoted(span: SourceSpan, found: PreparedContext) -> Citation | None:
    spec = found.spec
    if span.path is not None:
        if spec["kind"] != "folder" or span.path not in spec["files"]:
            return None
        if span.line_start is None or span.line_end is None:
            return None
        found_lines = _lines(Path(spec["path"]) / span.path, span.line_start, span.line_end)
        if found_lines is None:
            return None
        before, quote, after = found_lines
        return Citation(
            span.source,
            quote,
            path=span.path,
            line_start=span.line_start,
            line_end=span.line_end,
            before=before,
            after=after,
        )
    if spec["kind"] != "text_file" or span.start is None or span.end is None:
        return None
    start, end = span.start, span.end
    if not 0 <= start < end:
        return None
    lo = max(start - _AROUND_CHARS, 0)
    text = _chars(Path(spec["path"]), lo, end + _AROUND_CHARS)
    if len(text) < end - lo:  # the span runs past the end of the input
        return None
    before, quote, after = text[: start - lo], text[start - lo : end - lo], text[end - lo :]
    return Citation(span.source, _cut(quote), start=start, end=end, before=before, after=after)


def _chars(path: Path, start: int, end: int) -> str:
    """Characters ``start:end`` of a UTF-8 file, read in chunks (the file may be huge); fewer
    when the file ends first (none when it cannot be read)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # as the sandbox reads it
    seen = 0
    parts: list[str] = []
    try:
        with path.open("rb") as fh:
            while seen < end:
                chunk = fh.read(_CHUNK)
                text = decoder.decode(chunk, final=not chunk)
                lo, hi = max(start - seen, 0), min(end - seen, len(text))
                if lo < hi:
                    parts.append(text[lo:hi])
                seen += len(text)
                if not chunk:
                    break
    except OSError:
        return ""
    return "".join(parts)


def _lines(path: Path, first: int, last: int) -> tuple[str, str, str] | None:
    """Lines ``first..last`` (from 1, both included) of a UTF-8 file, with up to
    :data:`_AROUND_LINES` lines before and after them."""
    if not 1 <= first <= last:
        return None
    try:
        with path.open(encoding="utf-8", errors="replace", newline="") as fh:
            lines = _split_lines(fh.read())
    except OSError:
        return None
    if last > len(lines):
        return None
    before = "".join(lines[max(first - 1 - _AROUND_LINES, 0) : first - 1])
    after = "".join(lines[last : last + _AROUND_LINES])
    return before, _cut("".join(lines[first - 1 : last])), after


def _split_lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)  # the sandbox counts lines the same way


def _cut(quote: str) -> str:
    if len(quote) <= MAX_QUOTE_CHARS:
        return quote
    return quote[:MAX_QUOTE_CHARS] + f" [... {len(quote) - MAX_QUOTE_CHARS:,} characters more]"


def as_records(citations: Sequence[Citation]) -> list[dict[str, Any]]:
    """Citations as JSON-ready dicts (their fields and ``where``), as traces record them."""
    return [{**asdict(c), "where": c.where} for c in citations]


__all__ = ["MAX_QUOTE_CHARS", "Citation", "as_records", "resolve"]
