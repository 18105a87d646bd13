"""A response cache on disk: model replies keyed by (model, messages, options), in SQLite.

Re-running a run, a bench or a test suite then costs nothing for what was already asked, and
greedy runs repeat exactly. The store is one SQLite file in WAL mode, safe for many threads
(a connection each) and processes at once. A reply served from the cache carries
``usage.cache_hit``: it is not billed and spends no token budget, and traces mark it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ctxfold.errors import CtxfoldError
from ctxfold.models import Completion, Message, Model, TokenUsage, prepare_model

__all__ = ["CacheStats", "CachedModel", "ResponseCache", "default_cache_path"]

# Options that change what a model replies; others (a deadline, a timeout) do not.
_KEYED_OPTIONS = ("max_tokens", "temperature", "stop", "seed", "choices", "choice_items")


def default_cache_path() -> Path:
    """``$CTXFOLD_CACHE`` or ``$XDG_CACHE_HOME/ctxfold/responses.sqlite`` (``~/.cache/...``)."""
    given = os.environ.get("CTXFOLD_CACHE")
    if given:
        return Path(given).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ctxfold" / "responses.sqlite"


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What a cache holds."""

    path: Path
    entries: int
    bytes: int
    models: dict[str, int]


class ResponseCache:
    """Model replies on disk (``path``: a SQLite file, made with its folder if missing)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._db() as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT,"
                    " reply TEXT, created REAL)"
                )
        except (OSError, sqlite3.Error) as exc:
            raise CtxfoldError(f"cannot open the response cache {self.path}: {exc}") from None

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @staticmethod
    def key(model: str, messages: Sequence[Message], options: dict[str, Any]) -> str:
        """The key of a call: its model, messages and the options that change the reply."""
        keyed = {k: options[k] for k in _KEYED_OPTIONS if options.get(k) is not None}
        payload = json.dumps([model, list(messages), keyed], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, key: str) -> Completion | None:
        try:
            row = self._db().execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None  # a cache that cannot be read is a miss, not a failed run
        if row is None:
            return None
        data = json.loads(row[0])
        usage = TokenUsage(**data.pop("usage"))
        return Completion(usage=usage, **data)

    def put(self, key: str, model: str, completion: Completion) -> None:
        reply = json.dumps(asdict(completion), ensure_ascii=False)
        with contextlib.suppress(sqlite3.Error):  # not cached this time; the run goes on
            self._db().execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)",
                (key, model, reply, time.time()),
            )

    def stats(self) -> CacheStats:
        db = self._db()
        models = dict(db.execute("SELECT model, COUNT(*) FROM replies GROUP BY model").fetchall())
        size = sum(
            p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file()
        )
        return CacheStats(self.path, sum(models.values()), size, models)

    def clear(self) -> int:
        """Remove every reply; returns how many there were."""
        db = self._db()
        count: int = db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
        db.execute("DELETE FROM replies")
        db.execute("VACUUM")
        return count


class CachedModel:
    """``model`` whose replies come from ``cache`` when it has them (marked ``cache_hit``) and
    are stored there when it does not. Failed calls are not stored. Closing it closes nothing:
    the wrapped model is its maker's."""

    def __init__(self, model: Model, cache: ResponseCache) -> None:
        self.model = model
        self.cache = cache
        self.name = model.name
        self.context_window = model.context_window
        self.priced = getattr(model, "priced", False)

    def _lookup(self, messages: Sequence[Message], options: dict[str, Any]) -> tuple[str, Any]:
        key = self.cache.key(self.name, messages, options)
        found = self.cache.get(key)
        if found is None:
            return key, None
        hit = replace(found.usage, cache_hit=True, cost_usd=0.0)
        return key, replace(found, usage=hit)

    def complete(self, messages: Sequence[Message], **options: Any) -> Completion:
        key, hit = self._lookup(messages, options)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        completion = self.model.complete(messages, **options)
        self.cache.put(key, self.name, completion)
        return completion

    async def acomplete(self, messages: Sequence[Message], **options: Any) -> Completion:
        key, hit = self._lookup(messages, options)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        completion = await self.model.acomplete(messages, **options)
        self.cache.put(key, self.name, completion)
        return completion

    def prepare(self) -> None:
        """Prepare the wrapped model, if it can be (``OpenAIModel.prepare``)."""
        prepare_model(self.model)

    def close(self) -> None:
        """Nothing: the wrapped model is its maker's to close."""
