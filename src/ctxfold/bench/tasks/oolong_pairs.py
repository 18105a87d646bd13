"""OOLONG-Pairs-style questions: every pair of users whose instances' labels meet a condition.

The RLM paper (arXiv:2512.24601, appendix D.1) describes 20 pair queries over ~32K-token
``trec_coarse`` contexts. Its text was not available here: the 20 queries below were WRITTEN
AFTER THE PAPER'S DESCRIPTION, in its spirit, NOT COPIED from it. Context lines are those of
:mod:`ctxfold.bench.tasks.oolong`; each user gets its own few-label mix so that conditions on
label sets split the users. Answers are ``(id1, id2)`` lines with ``id1 < id2``; the score is the
F1 of the predicted pair set against the gold one.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable

from ctxfold.bench._types import Instance
from ctxfold.bench.tasks._common import (
    _chars_per_token,
    _check_args,
    _meta,
    _pick_variant,
    _rng,
    _strip_fences,
    _VariantTask,
)
from ctxfold.bench.tasks._trec import CODES, _header, _Row, _rows, _user_ids

__all__ = ["QUERIES", "VARIANTS", "OolongPairsTask", "parse_pairs"]

_Labels = Counter[str]
_Cond = Callable[[_Labels, _Labels], bool]
_Window = tuple[dt.date, dt.date] | None


def _has(c: _Labels, *codes: str) -> bool:
    return any(c[x] > 0 for x in codes)


def _kinds(c: _Labels) -> set[str]:
    return {x for x in CODES if c[x] > 0}


def _either(f: Callable[[_Labels], bool], g: Callable[[_Labels], bool]) -> _Cond:
    return lambda a, b: (f(a) and g(b)) or (f(b) and g(a))


_Y2023 = (dt.date(2023, 1, 1), dt.date(2023, 12, 31))
_Y2024 = (dt.date(2024, 1, 1), dt.date(2024, 12, 31))
_H1_2023 = (dt.date(2023, 1, 1), dt.date(2023, 6, 30))
_H2_2024 = (dt.date(2024, 7, 1), dt.date(2024, 12, 31))

QUERIES: tuple[tuple[str, _Window, _Cond], ...] = (
    (
        "both users have at least one instance with a numeric value or location label",
        None,
        lambda a, b: _has(a, "NUM", "LOC") and _has(b, "NUM", "LOC"),
    ),
    (
        "one user has at least one entity instance and the other user has at least one "
        "abbreviation instance",
        None,
        _either(lambda c: _has(c, "ENTY"), lambda c: _has(c, "ABBR")),
    ),
    (
        "both users have at least one human being instance",
        None,
        lambda a, b: _has(a, "HUM") and _has(b, "HUM"),
    ),
    (
        "neither user has any description and abstract concept instance",
        None,
        lambda a, b: not _has(a, "DESC") and not _has(b, "DESC"),
    ),
    (
        "both users have exactly the same set of labels among their instances",
        None,
        lambda a, b: _kinds(a) == _kinds(b),
    ),
    (
        "both users have at least one human being instance and at least one of the two users has "
        "an abbreviation instance",
        None,
        lambda a, b: _has(a, "HUM") and _has(b, "HUM") and (_has(a, "ABBR") or _has(b, "ABBR")),
    ),
    (
        "exactly one of the two users has at least one location instance",
        None,
        lambda a, b: _has(a, "LOC") != _has(b, "LOC"),
    ),
    (
        "both users have at least one entity instance dated in 2024",
        _Y2024,
        lambda a, b: _has(a, "ENTY") and _has(b, "ENTY"),
    ),
    (
        "both users have at least one numeric value instance dated between Jan 01, 2023 and "
        "Jun 30, 2023 (inclusive)",
        _H1_2023,
        lambda a, b: _has(a, "NUM") and _has(b, "NUM"),
    ),
    (
        "each of the two users has more numeric value instances than human being instances",
        None,
        lambda a, b: a["NUM"] > a["HUM"] and b["NUM"] > b["HUM"],
    ),
    (
        "both users have at least three entity instances",
        None,
        lambda a, b: a["ENTY"] >= 3 and b["ENTY"] >= 3,
    ),
    (
        "between them the two users have instances of all six labels",
        None,
        lambda a, b: len(_kinds(a) | _kinds(b)) == len(CODES),
    ),
    ("the two users have no label in common", None, lambda a, b: not (_kinds(a) & _kinds(b))),
    (
        "both users have at least one description and abstract concept instance and neither "
        "user has a location instance",
        None,
        lambda a, b: (
            _has(a, "DESC") and _has(b, "DESC") and not _has(a, "LOC") and not _has(b, "LOC")
        ),
    ),
    (
        "considering only instances dated in 2023, one user has a human being instance and the "
        "other user has a numeric value instance",
        _Y2023,
        _either(lambda c: _has(c, "HUM"), lambda c: _has(c, "NUM")),
    ),
    (
        "both users have instances of at least four different labels",
        None,
        lambda a, b: len(_kinds(a)) >= 4 and len(_kinds(b)) >= 4,
    ),
    (
        "both users have instances of at most two different labels",
        None,
        lambda a, b: len(_kinds(a)) <= 2 and len(_kinds(b)) <= 2,
    ),
    (
        "each user has some label that the other user does not have",
        None,
        lambda a, b: bool(_kinds(a) - _kinds(b)) and bool(_kinds(b) - _kinds(a)),
    ),
    (
        "both users have at least one location instance dated between Jul 01, 2024 and "
        "Dec 31, 2024 (inclusive)",
        _H2_2024,
        lambda a, b: _has(a, "LOC") and _has(b, "LOC"),
    ),
    (
        "both users have at least one abbreviation or description and abstract concept instance, "
        "and both have at least one entity instance",
        None,
        lambda a, b: (
            _has(a, "ABBR", "DESC")
            and _has(b, "ABBR", "DESC")
            and _has(a, "ENTY")
            and _has(b, "ENTY")
        ),
    ),
)
"""The 20 pair queries: condition text, optional inclusive date window, predicate over the two
users' label counts (restricted to the window)."""

VARIANTS: tuple[str, ...] = tuple(f"q{k:02d}" for k in range(1, len(QUERIES) + 1))
"""One variant per query, cycled over by instance index."""

_PAREN_PAIR = re.compile(r"\(\s*\**(\d+)\**\s*,\s*\**(\d+)\**\s*\)")
_LINE_PAIR = re.compile(r"^\D*?(\d+)\D+?(\d+)\D*$")


def _user_mixes(rng: random.Random, users: list[int]) -> dict[int, dict[str, float]]:
    """Each user draws on one to five labels, so label-set conditions split the users."""
    mixes: dict[int, dict[str, float]] = {}
    for user in users:
        k = rng.choice((1, 2, 2, 3, 3, 4, 5))
        chosen = rng.sample(CODES, k)
        mixes[user] = {c: rng.uniform(0.2, 1.0) for c in chosen}
    return mixes


def _gold(rows: list[_Row], window: _Window, cond: _Cond) -> set[tuple[int, int]]:
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    users = sorted({r.user for r in rows})
    for r in rows:
        if window is None or window[0] <= r.date <= window[1]:
            counts[r.user][r.label] += 1
    return {(a, b) for a, b in itertools.combinations(users, 2) if cond(counts[a], counts[b])}


def parse_pairs(text: str) -> set[tuple[int, int]]:
    """User-id pairs in an answer as ``(smaller, larger)``: ``(a, b)`` anywhere, else one pair of
    numbers per line. Self-pairs are dropped."""
    text = _strip_fences(text)
    found = [(int(a), int(b)) for a, b in _PAREN_PAIR.findall(text)]
    if not found:
        for line in text.splitlines():
            match = _LINE_PAIR.match(line.strip())
            if match:
                found.append((int(match.group(1)), int(match.group(2))))
    return {(min(a, b), max(a, b)) for a, b in found if a != b}


def _sample_text() -> str:
    rng = random.Random("ctxfold:oolong_pairs:calibration")
    users = _user_ids(rng, 30)
    rows = _rows(rng, 120_000, users, _user_mixes(rng, users))
    return "\n".join(r.line() for r in rows)


class OolongPairsTask(_VariantTask):
    """OOLONG-Pairs-style pair listing; ``variant`` (``q01`` .. ``q20``) fixes the query."""

    name: str = "oolong_pairs"
    default_lengths: tuple[int, ...] = (32_000,)
    variants = VARIANTS

    def generate(self, *, n: int, length: int, seed: int) -> list[Instance]:
        """``n`` instances of about ``length`` tokens each (20-40 users per context)."""
        _check_args(self.name, n, length)
        cpt = _chars_per_token("oolong_pairs", _sample_text)
        return [self._one(i, length, seed, cpt) for i in range(n)]

    def _one(self, index: int, length: int, seed: int, cpt: float) -> Instance:
        variant = _pick_variant(self.name, VARIANTS, self.variant, index)
        text, window, cond = QUERIES[VARIANTS.index(variant)]
        target = int(length * cpt)
        n_users = max(20, min(40, target // 3000))
        # redraw the users' label mixes until the gold set is neither empty nor nearly all pairs
        for attempt in range(12):
            rng = _rng(self.name, length, seed, index, salt=str(attempt))
            users = _user_ids(rng, n_users)
            rows = _rows(rng, target, users, _user_mixes(rng, users))
            present = len({r.user for r in rows})
            gold = _gold(rows, window, cond)
            if 0 < len(gold) <= 0.6 * present * (present - 1) / 2:
                break
        context = "\n".join(r.line() for r in rows)
        question = (
            f"{_header()}\n\nList every pair of user ids such that {text}. Give one pair per "
            "line as (id1, id2) with id1 < id2, each pair once, and nothing else. If no pair "
            "qualifies, answer NONE."
        )
        return Instance(
            task=self.name,
            id=f"{self.name}-{length}-{seed}-{index}",
            question=question,
            context=context,
            gold=sorted(gold),
            meta=_meta(
                context=context,
                cpt=cpt,
                seed=seed,
                variant=variant,
                index=index,
                query=text,
                users=present,
                gold_pairs=len(gold),
                attempt=attempt,
            ),
        )

    def score(self, instance: Instance, prediction: str) -> float:
        """F1 of the predicted pair set against the gold one (both empty: 1.0)."""
        gold = {(min(a, b), max(a, b)) for a, b in instance.gold}
        got = parse_pairs(prediction)
        if not gold or not got:
            return 1.0 if not gold and not got else 0.0
        hit = len(gold & got)
        if hit == 0:
            return 0.0
        precision, recall = hit / len(got), hit / len(gold)
        return 2 * precision * recall / (precision + recall)
