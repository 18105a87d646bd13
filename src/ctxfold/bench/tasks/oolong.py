"""OOLONG ``trec_coarse``-style aggregation (arXiv:2511.02817) over TREC questions.

The context is lines ``Date: Mon DD, YYYY || User: 12345 || Instance: <question>`` with the
questions' labels hidden; answering needs a label for every line, then an aggregate: the most or
least common label, a label's count (overall, after or before a date, or for one user) or a
comparison of two labels' counts. Gold answers come from the true TREC labels.
"""

from __future__ import annotations

import bisect
import datetime as dt
import random
import re
from collections import Counter

from ctxfold.bench._types import Instance
from ctxfold.bench.tasks._common import (
    _chars_per_token,
    _check_args,
    _meta,
    _normalize,
    _parse_int,
    _pick_variant,
    _rng,
    _VariantTask,
)
from ctxfold.bench.tasks._trec import (
    CODES,
    DATE_DAYS,
    DATE_START,
    LABELS,
    _fmt_date,
    _header,
    _label_in,
    _Row,
    _rows,
    _Sampler,
    _user_ids,
)

__all__ = ["VARIANTS", "OolongTask"]

VARIANTS: tuple[str, ...] = (
    "most_common",
    "least_common",
    "count",
    "compare",
    "count_after_date",
    "count_before_date",
    "count_user",
)
"""Question kinds, cycled over by instance index."""

_COMPARE = ("more common", "less common", "equally common")
_COMPARE_RE = re.compile(r"\b(more|less|fewer|equal|equally|same|as common)\b")


def _sample_text() -> str:
    rows = _rows(
        random.Random("ctxfold:oolong:calibration"), 120_000, _user_ids(random.Random(0), 50)
    )
    return "\n".join(r.line() for r in rows)


class OolongTask(_VariantTask):
    """OOLONG ``trec_coarse``-style questions; ``variant`` fixes the question kind."""

    name: str = "oolong"
    variants = VARIANTS

    def generate(self, *, n: int, length: int, seed: int) -> list[Instance]:
        """``n`` instances of about ``length`` tokens each."""
        _check_args(self.name, n, length)
        cpt = _chars_per_token("oolong", _sample_text)
        return [self._one(i, length, seed, cpt) for i in range(n)]

    def _one(self, index: int, length: int, seed: int, cpt: float) -> Instance:
        rng = _rng(self.name, length, seed, index)
        variant = _pick_variant(self.name, VARIANTS, self.variant, index)
        target = int(length * cpt)
        users = _user_ids(rng, max(8, min(300, target // 2000)))
        rows = _rows(rng, target, users)
        sampler = _Sampler(rng)
        question, gold, answer_type = self._ask(variant, rows, rng, sampler)
        context = "\n".join(r.line() for r in rows)
        return Instance(
            task=self.name,
            id=f"{self.name}-{length}-{seed}-{index}",
            question=f"{_header()}\n\n{question}",
            context=context,
            gold=gold,
            meta=_meta(
                context=context,
                cpt=cpt,
                seed=seed,
                variant=variant,
                index=index,
                answer_type=answer_type,
                lines=len(rows),
                users=len({r.user for r in rows}),
            ),
        )

    def _ask(
        self, variant: str, rows: list[_Row], rng: random.Random, sampler: _Sampler
    ) -> tuple[str, str | int, str]:
        counts = Counter(r.label for r in rows)
        label = rng.choice(CODES)
        name = LABELS[label]
        if variant in ("most_common", "least_common"):
            pick = max if variant == "most_common" else min
            while True:  # break ties by adding a line of one tied label
                best = pick(counts[c] for c in CODES)
                tied = [c for c in CODES if counts[c] == best]
                if len(tied) == 1:
                    break
                grow = tied[0]  # most: it becomes the maximum; least: it leaves the minimum
                day = DATE_START + dt.timedelta(days=rng.randrange(DATE_DAYS))
                row = _Row(day, rng.choice([r.user for r in rows]), grow, sampler.draw(grow))
                bisect.insort(rows, row, key=lambda r: r.date)
                counts[grow] += 1
            word = "most" if variant == "most_common" else "least"
            question = (
                f"Which label is the {word} common among all the instances? Answer with the "
                "label's name."
            )
            return question, LABELS[tied[0]], "label"
        if variant == "count":
            return f"How many instances have the label '{name}'?", counts[label], "number"
        if variant == "compare":
            other = rng.choice([c for c in CODES if c != label])
            a, b = counts[label], counts[other]
            gold = _COMPARE[0] if a > b else _COMPARE[1] if a < b else _COMPARE[2]
            question = (
                f"Is the label '{name}' more common, less common, or equally common compared "
                f"with the label '{LABELS[other]}' among all the instances? Answer with one of: "
                "more common, less common, equally common."
            )
            return question, gold, "comparison"
        if variant in ("count_after_date", "count_before_date"):
            cut = DATE_START + dt.timedelta(days=rng.randrange(DATE_DAYS // 5, DATE_DAYS * 4 // 5))
            after = variant == "count_after_date"
            hits = sum(
                1 for r in rows if r.label == label and (r.date > cut if after else r.date < cut)
            )
            word = "after" if after else "before"
            question = (
                f"Among the instances dated {word} {_fmt_date(cut)} (that day itself excluded), "
                f"how many have the label '{name}'?"
            )
            return question, hits, "number"
        # count_user: a user with several lines, and a label that user has
        per_user = Counter(r.user for r in rows)
        user = rng.choice([u for u, k in per_user.most_common(max(1, len(per_user) // 2))])
        labels = sorted({r.label for r in rows if r.user == user})
        label = rng.choice(labels)
        hits = sum(1 for r in rows if r.user == user and r.label == label)
        question = (
            f"For user {user}, how many of that user's instances have the label '{LABELS[label]}'?"
        )
        return question, hits, "number"

    def score(self, instance: Instance, prediction: str) -> float:
        """Labels and comparisons: 1.0 on a match, else 0.0; counts: ``0.75 ** |error|``."""
        kind = instance.meta.get("answer_type")
        if kind == "number":
            got = _parse_int(prediction)
            return 0.0 if got is None else 0.75 ** abs(got - int(instance.gold))
        if kind == "comparison":
            return 1.0 if _comparison_in(prediction) == instance.gold else 0.0
        code = _label_in(prediction)
        return 1.0 if code is not None and LABELS[code] == instance.gold else 0.0


def _comparison_in(text: str) -> str | None:
    norm = _normalize(text)
    if norm in _COMPARE:
        return norm
    found = _COMPARE_RE.search(norm)
    if found is None:
        return None
    word = found.group(1)
    if word == "more":
        return _COMPARE[0]
    if word in ("less", "fewer"):
        return _COMPARE[1]
    return _COMPARE[2]
