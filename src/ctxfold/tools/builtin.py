"""Built-in tools over a local corpus: ``search`` (BM25), ``read`` (paged) and ``grep`` (regex)."""

from __future__ import annotations

import os
import time
from pathlib import Path

# `regex` (a dependency of tiktoken), not `re`: a pattern with catastrophic backtracking can be
# stopped by a timeout, and matching releases the GIL (an `re` match holds it until it ends,
# freezing the whole host, whatever the tool's timeout).
import regex  # type: ignore[import-untyped]

from ctxfold.tools._tool import Tool
from ctxfold.tools.search import Corpus

MAX_READ = 20_000
MAX_GREP_HITS = 50
GREP_SECONDS = 10.0  # all the matching of one grep call
_LINE_CHARS = 200


class CorpusTools:
    """The functions behind :func:`corpus_tools`, bound to one :class:`Corpus`."""

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus

    def search(self, query: str, k: int = 5) -> str:
        """Search the document collection with BM25 keyword ranking; best matches first.

        Args:
            query: keywords to look for (plain words work best).
            k: how many documents to return (at most 20).
        """
        hits = self.corpus.search(query, max(1, min(int(k), 20)))
        if not hits:
            return f"No documents match {query!r}."
        return "\n".join(
            f"{rank}. [{hit.doc_id}] (score {hit.score:.2f}) {hit.snippet}"
            for rank, hit in enumerate(hits, 1)
        )

    def read(self, doc_id: str, start: int = 0, length: int = 4000) -> str:
        """Read part of one document, by the id search or grep gave.

        Args:
            doc_id: the document id (or its path inside the collection).
            start: the character offset to start at.
            length: how many characters to read (at most 20000).
        """
        text = self._document(doc_id)
        start = max(0, int(start))
        end = min(len(text), start + max(1, min(int(length), MAX_READ)))
        more = f"; continue with start={end}" if end < len(text) else ""
        return f"[{doc_id}] characters {start}-{end} of {len(text)}{more}\n{text[start:end]}"

    def grep(self, pattern: str, path: str = "") -> str:
        """Find the lines matching a regular expression (case-insensitive) in the documents.

        Args:
            pattern: a Python regular expression.
            path: only documents whose id starts with this (empty for all).
        """
        compiled = regex.compile(pattern, regex.IGNORECASE)
        deadline = time.monotonic() + GREP_SECONDS
        found: list[str] = []
        for doc_id, text in self.corpus.docs.items():
            if path and not doc_id.startswith(path):
                continue
            for number, line in enumerate(text.splitlines(), 1):
                try:
                    hit = compiled.search(
                        line, timeout=max(deadline - time.monotonic(), 0.001), concurrent=True
                    )
                except TimeoutError:
                    stop = f"(stopped: the pattern took over {GREP_SECONDS:g} s; use a simpler one)"
                    return "\n".join([*found, stop])
                if hit:
                    found.append(f"{doc_id}:{number}: {line.strip()[:_LINE_CHARS]}")
                    if len(found) >= MAX_GREP_HITS:
                        return "\n".join([*found, f"(stopped at {MAX_GREP_HITS} matches)"])
        return "\n".join(found) if found else f"No lines match {pattern!r}."

    def _document(self, doc_id: str) -> str:
        docs = self.corpus.docs
        if doc_id in docs:
            return docs[doc_id]
        # A path given absolute or relative to the corpus folder, if it names one of its files.
        root = self.corpus.path if self.corpus.path.is_dir() else self.corpus.path.parent
        candidate = Path(doc_id)
        candidate = (candidate if candidate.is_absolute() else root / candidate).resolve()
        relative = os.path.relpath(candidate, root) if candidate.is_relative_to(root) else None
        if relative is not None and Path(relative).as_posix() in docs:
            return docs[Path(relative).as_posix()]
        raise KeyError(f"no document {doc_id!r}; use an id that search or grep returned")


def corpus_tools(
    path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
) -> list[Tool]:
    """``search``, ``read`` and ``grep`` tools bound to the corpus at ``path``.

    ``path`` is a folder of text files, a JSONL file of ``{"id", "text"}`` documents or one text
    file. The BM25 index is built on the first search and cached (see :mod:`ctxfold.tools.search`).
    """
    bound = CorpusTools(Corpus(path, cache_dir=cache_dir))
    return [
        Tool.from_function(bound.search, timeout=timeout),
        Tool.from_function(bound.read, timeout=timeout),
        Tool.from_function(bound.grep, timeout=timeout),
    ]
