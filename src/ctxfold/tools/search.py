"""A local text corpus with a BM25 index (``bm25s``), built once and cached on disk.

A corpus is a folder of text files (each file is a document, its id the path relative to the
folder), a JSONL file of ``{"id": ..., "text": ...}`` documents, or a single text file. The index
lives under ``cache_dir / <hash>``, where the hash covers the corpus files' paths, mtimes and
sizes, so changing a file rebuilds it and an unchanged corpus is loaded, never rebuilt. The cache
directory is ``$CTXFOLD_CACHE_DIR/bm25`` if set, else ``$XDG_CACHE_HOME/ctxfold/bm25`` (by
default ``~/.cache/ctxfold/bm25``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxfold.errors import CtxfoldError

_INDEX_VERSION = "1"
_TEXT_SUFFIXES = {"", ".txt", ".md", ".rst", ".json", ".jsonl", ".csv", ".tsv", ".html", ".xml",
                  ".log", ".py", ".yaml", ".yml", ".toml", ".tex"}  # fmt: skip
_MAX_FILE_BYTES = 50_000_000


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: the document id, its BM25 score and a snippet around the match."""

    doc_id: str
    score: float
    snippet: str


def default_cache_dir() -> Path:
    """Where BM25 indexes are cached (see the module docstring)."""
    explicit = os.environ.get("CTXFOLD_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser() / "bm25"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ctxfold" / "bm25"


class Corpus:
    """Documents from ``path``, searchable with BM25 (index built lazily, cached on disk).

    ``built`` tells whether this object built the index (``False`` when it came from the cache).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.exists():
            raise CtxfoldError(f"corpus not found: {path}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._files = _corpus_files(self.path)
        self.docs: dict[str, str] = _load_docs(self.path, self._files)
        self._ids = list(self.docs)
        self._lock = threading.Lock()
        self._index: Any = None
        self.built = False

    @property
    def fingerprint(self) -> str:
        """A hash of the corpus files' paths, mtimes and sizes (the cache key)."""
        digest = hashlib.sha256(f"v{_INDEX_VERSION}\0{self.path}".encode())
        for file in self._files:
            stat = file.stat()
            digest.update(f"\0{file}\0{stat.st_mtime_ns}\0{stat.st_size}".encode())
        return digest.hexdigest()[:24]

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The ``k`` best documents for ``query`` (documents with no matching term left out)."""
        bm25s = _bm25s()
        index = self._ensure_index()
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)
        if not self._ids or not tokens or not tokens[0]:
            return []
        k = max(1, min(int(k), len(self._ids)))
        docs, scores = index.retrieve(tokens, k=k, show_progress=False)
        hits = []
        for position, score in zip(docs[0], scores[0], strict=True):
            if float(score) <= 0:
                continue
            doc_id = self._ids[int(position)]
            hits.append(Hit(doc_id, float(score), _snippet(self.docs[doc_id], tokens[0])))
        return hits

    def _ensure_index(self) -> Any:
        with self._lock:
            if self._index is None:
                self._index = self._load_or_build()
            return self._index

    def _load_or_build(self) -> Any:
        bm25s = _bm25s()
        folder = self.cache_dir / self.fingerprint
        if (folder / "ids.json").exists():
            try:
                if json.loads((folder / "ids.json").read_text(encoding="utf-8")) == self._ids:
                    return bm25s.BM25.load(str(folder), show_progress=False)
            except (OSError, ValueError):
                pass  # a damaged cache entry is rebuilt below
        texts = [self.docs[i] for i in self._ids] or [""]
        index = bm25s.BM25()
        index.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        self.built = True
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=self.cache_dir))
        try:
            index.save(str(tmp), show_progress=False)
            (tmp / "ids.json").write_text(json.dumps(self._ids), encoding="utf-8")
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # an unwritable cache only costs a rebuild
        return index


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError:
        raise CtxfoldError("search needs the bm25s package: pip install 'ctxfold[tools]'") from None
    return bm25s


def _corpus_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and p.suffix.lower() in _TEXT_SUFFIXES
        and p.stat().st_size <= _MAX_FILE_BYTES
    )


def _load_docs(root: Path, files: list[Path]) -> dict[str, str]:
    if root.is_file() and root.suffix.lower() == ".jsonl":
        return _load_jsonl(root)
    if root.is_file():
        return {root.name: root.read_text(encoding="utf-8", errors="replace")}
    return {
        p.relative_to(root).as_posix(): p.read_text(encoding="utf-8", errors="replace")
        for p in files
    }


def _load_jsonl(path: Path) -> dict[str, str]:
    docs: dict[str, str] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CtxfoldError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or "text" not in record:
                raise CtxfoldError(f'{path}:{number}: expected {{"id": ..., "text": ...}}')
            docs[str(record.get("id", number))] = str(record["text"])
    return docs


def _snippet(text: str, terms: list[str], width: int = 300) -> str:
    lower = text.lower()
    positions = [p for p in (lower.find(t) for t in terms) if p >= 0]
    start = max(0, min(positions) - width // 3) if positions else 0
    piece = " ".join(text[start : start + width].split())
    return ("..." if start else "") + piece + ("..." if start + width < len(text) else "")
