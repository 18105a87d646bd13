"""The TREC question-classification data behind the OOLONG tasks, and the line format they share.

The files are read at run time from ``$CTXFOLD_TREC_DIR`` (default:
``<repo root>/../shared/data/trec``), never copied into the project.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ctxfold.bench.tasks._common import _normalize
from ctxfold.errors import CtxfoldError

TREC_DIR_ENV = "CTXFOLD_TREC_DIR"

LABELS: dict[str, str] = {
    "ABBR": "abbreviation",
    "DESC": "description and abstract concept",
    "ENTY": "entity",
    "HUM": "human being",
    "LOC": "location",
    "NUM": "numeric value",
}
"""TREC's coarse labels and the names OOLONG's ``trec_coarse`` gives them."""

CODES: tuple[str, ...] = tuple(LABELS)

_FILES = (("TREC.train", "latin-1"), ("TREC.test", "ascii"))
_LINE_RE = re.compile(r"^([A-Z]+):(\S+) (.+)$")

DATE_START = dt.date(2023, 1, 1)
DATE_DAYS = 730  # Jan 01, 2023 .. Dec 31, 2024


@dataclass(frozen=True, slots=True)
class TrecQuestion:
    """One TREC question: its coarse label code (a key of :data:`LABELS`, e.g. ``"NUM"``) and
    its text, spaces collapsed."""

    label: str
    text: str


@dataclass(frozen=True, slots=True)
class _Row:
    date: dt.date
    user: int
    label: str
    text: str

    def line(self) -> str:
        return f"Date: {_fmt_date(self.date)} || User: {self.user} || Instance: {self.text}"


def trec_dir() -> Path:
    """Where the TREC files are read from: ``$CTXFOLD_TREC_DIR``, else ``../shared/data/trec``
    beside the repository."""
    env = os.environ.get(TREC_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[4].parent / "shared" / "data" / "trec"


@lru_cache(maxsize=4)
def load_trec(directory: str | None = None) -> tuple[TrecQuestion, ...]:
    """Every TREC question (train then test) with its coarse label; read once per directory.

    Raises :class:`CtxfoldError` when the files cannot be read."""
    root = Path(directory) if directory is not None else trec_dir()
    out: list[TrecQuestion] = []
    for name, encoding in _FILES:
        path = root / name
        try:
            raw = path.read_text(encoding=encoding)
        except OSError as exc:
            raise CtxfoldError(
                f"TREC data not found at {path} ({exc.strerror}); set {TREC_DIR_ENV} to the "
                "folder holding TREC.train and TREC.test"
            ) from exc
        for line in raw.splitlines():
            match = _LINE_RE.match(line.strip())
            if match and match.group(1) in LABELS:
                out.append(TrecQuestion(match.group(1), " ".join(match.group(3).split())))
    if not out:
        raise CtxfoldError(f"no TREC questions could be read from {root}")
    return tuple(out)


@lru_cache(maxsize=4)
def _by_label(directory: str | None = None) -> dict[str, tuple[str, ...]]:
    pools: dict[str, list[str]] = {code: [] for code in CODES}
    for q in load_trec(directory):
        pools[q.label].append(q.text)
    return {code: tuple(texts) for code, texts in pools.items()}


def _fmt_date(day: dt.date) -> str:
    return f"{day:%b} {day.day:02d}, {day.year}"


class _Sampler:
    """Draws questions of a label without repeats until that label's pool is used up."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._pools = _by_label()
        self._queues: dict[str, list[str]] = {}

    def draw(self, label: str) -> str:
        queue = self._queues.get(label)
        if not queue:
            queue = list(self._pools[label])
            self._rng.shuffle(queue)
            self._queues[label] = queue
        return queue.pop()


def _label_weights(rng: random.Random) -> dict[str, float]:
    """A skewed label mix for one instance, so counts differ and ranks are informative."""
    # ABBR has under a hundred questions: keep it rarer so its lines repeat less
    return {code: rng.uniform(0.15, 1.0) ** 2 * (0.3 if code == "ABBR" else 1.0) for code in CODES}


def _rows(
    rng: random.Random,
    target_chars: int,
    users: list[int],
    user_labels: dict[int, dict[str, float]] | None = None,
) -> list[_Row]:
    """Rows whose lines (joined by newlines) total about ``target_chars`` characters.

    With ``user_labels`` each row's label comes from its user's own mix; otherwise from one
    instance-wide mix.
    """
    sampler = _Sampler(rng)
    mix = _label_weights(rng)
    codes = list(CODES)
    user_weights = [rng.uniform(0.3, 1.0) for _ in users]
    rows: list[_Row] = []
    size = 0
    while size < target_chars:
        user = rng.choices(users, user_weights)[0]
        weights = (user_labels or {}).get(user, mix)
        label = rng.choices(codes, [weights.get(c, 0.0) for c in codes])[0]
        day = DATE_START + dt.timedelta(days=rng.randrange(DATE_DAYS))
        row = _Row(day, user, label, sampler.draw(label))
        rows.append(row)
        size += len(row.line()) + 1
    rows.sort(key=lambda r: r.date)
    return rows


def _user_ids(rng: random.Random, k: int) -> list[int]:
    return rng.sample(range(10_000, 100_000), k)


def _header() -> str:
    names = ", ".join(f"'{name}'" for name in LABELS.values())
    return (
        "The context lists instances, one per line, as "
        "'Date: <date> || User: <user id> || Instance: <question text>'. Each instance is a "
        f"question that has exactly one of six labels: {names}. The labels are not shown: "
        "infer each instance's label from its question text."
    )


def _label_in(text: str) -> str | None:
    """The label code a free-form answer names (by name, code or head word), earliest first."""
    norm = f" {_normalize(text)} "
    for code, name in LABELS.items():
        if norm.strip() in (name, code.lower()):
            return code
    best: tuple[int, str] | None = None
    for code, name in LABELS.items():
        for form in (name, code.lower(), name.split()[0]):
            pos = norm.find(f" {form} ")
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, code)
    return best[1] if best else None
