"""Verbatim copy: reproduce one JSON record, CSV row or code from a large seeded ``faker`` context.

Kinds: ``json`` (JSON Lines records), ``csv`` (a table with a header), ``codes`` (labelled UUIDs
and alphanumeric codes) and ``mixed`` (sections of all three and faker prose). :meth:`score` is
exact match after stripping whitespace and code fences; :func:`similarity` gives the normalised
Levenshtein similarity for partial credit, to be stored next to the score.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import threading
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import Any

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
from ctxfold.errors import CtxfoldError

__all__ = ["VARIANTS", "VerbatimTask", "levenshtein", "similarity"]

VARIANTS: tuple[str, ...] = ("json", "csv", "codes", "mixed")
"""Context kinds, cycled over by instance index."""

_CSV_FIELDS = ("id", "name", "company", "phone", "city", "date", "amount")
_POOL = 200
_QUOTES = "`'\"*"


@lru_cache(maxsize=1)
def _faker_instance() -> Any:
    try:
        from faker import Faker
    except ImportError as exc:
        raise CtxfoldError("the verbatim task needs faker: run `pip install faker`") from exc
    return Faker("en_US")


_FAKER_LOCK = threading.Lock()


class _Maker:
    """Records drawn from faker value pools (faker is slow per call: pools keep 131K fast)."""

    def __init__(self, rng: random.Random) -> None:
        fake = _faker_instance()
        self.rng = rng
        with _FAKER_LOCK:  # one shared Faker (slow to build), re-seeded for each context
            fake.seed_instance(rng.getrandbits(32))
            self.names = [fake.name() for _ in range(_POOL)]
            self.companies = [fake.company() for _ in range(_POOL)]
            self.cities = [fake.city() for _ in range(_POOL)]
            self.phones = [fake.phone_number() for _ in range(_POOL)]
            self.jobs = [fake.job() for _ in range(_POOL)]
            self.sentences = [fake.sentence(nb_words=12) for _ in range(_POOL)]
            self.domains = [fake.free_email_domain() for _ in range(20)]
        self.used: set[int] = set()

    def new_id(self) -> int:
        while True:
            key = self.rng.randrange(1000, 1_000_000)
            if key not in self.used:
                self.used.add(key)
                return key

    def date(self) -> str:
        r = self.rng
        return f"{r.randint(2015, 2025)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"

    def json_line(self) -> tuple[int, str]:
        r = self.rng
        key = self.new_id()
        name = r.choice(self.names)
        user = re.sub(r"[^a-z]", "", name.lower())[:12] or "user"
        record = {
            "id": key,
            "name": name,
            "email": f"{user}{r.randint(1, 999)}@{r.choice(self.domains)}",
            "job": r.choice(self.jobs),
            "city": r.choice(self.cities),
            "joined": self.date(),
            "balance": round(r.uniform(-500, 50_000), 2),
            "active": r.random() < 0.7,
        }
        return key, json.dumps(record, ensure_ascii=False)

    def csv_row(self) -> tuple[int, str]:
        r = self.rng
        key = self.new_id()
        row = [
            key,
            r.choice(self.names),
            r.choice(self.companies),
            r.choice(self.phones),
            r.choice(self.cities),
            self.date(),
            f"{r.uniform(0, 99_999):.2f}",
        ]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(row)
        return key, buf.getvalue()

    def code_line(self) -> tuple[int, str, str]:
        r = self.rng
        key = self.new_id()
        if r.random() < 0.5:
            code = str(uuid.UUID(int=r.getrandbits(128), version=4))
        else:
            alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
            code = "".join(r.choice(alphabet) for _ in range(r.randint(12, 28)))
        return key, f"CODE-{key}: {code}", code


def _build(
    kind: str, rng: random.Random, target: float, cpt: dict[str, float]
) -> tuple[str, str, str, float]:
    """(context, question, gold, estimated tokens) for one kind with about ``target`` tokens;
    ``cpt`` is the characters per token of each kind of line."""
    maker = _Maker(rng)
    parts: list[str] = []
    size = 0.0
    # (kind, key, copyable text) of every record, to pick the target from
    items: list[tuple[str, int, str]] = []

    def add(text: str, of: str = "prose") -> None:
        nonlocal size
        parts.append(text)
        size += (len(text) + 1) / cpt[of]

    makers: dict[str, Callable[[], None]] = {}

    def one_json() -> None:
        key, line = maker.json_line()
        items.append(("json", key, line))
        add(line, "json")

    def one_csv() -> None:
        key, line = maker.csv_row()
        items.append(("csv", key, line))
        add(line, "csv")

    def one_code() -> None:
        key, line, code = maker.code_line()
        items.append(("codes", key, code))
        add(line, "codes")

    makers.update(json=one_json, csv=one_csv, codes=one_code)
    if kind == "csv":
        add(",".join(_CSV_FIELDS))
    if kind != "mixed":
        while size < target:
            makers[kind]()
    else:
        while size < target:
            section = rng.choice(("json", "csv", "codes", "prose"))
            count = rng.randint(3, 25)
            if section == "prose":
                add("## Notes")
                count = max(1, min(count, int((target - size) / 20)))
                add(" ".join(rng.choice(maker.sentences) for _ in range(count)))
                continue
            add({"json": "## JSON records", "csv": "## CSV table", "codes": "## Codes"}[section])
            if section == "csv":
                add(",".join(_CSV_FIELDS))
            for _ in range(count):
                makers[section]()
                if size >= target:
                    break
    item_kind, key, gold = rng.choice(items)
    question = {
        "json": f"Copy exactly the JSON record whose id is {key}",
        "csv": f"Copy exactly the CSV row whose id is {key} (the whole line)",
        "codes": f"Copy exactly the code labelled CODE-{key} (the code only, without the label)",
    }[item_kind]
    question += ", character for character as it appears in the context. Reply with it alone."
    return "\n".join(parts), question, gold, size


def _sample(kind: str) -> Callable[[], str]:
    def make() -> str:
        maker = _Maker(random.Random(f"ctxfold:verbatim:calibration:{kind}"))
        if kind == "prose":
            return "\n".join(" ".join(maker.sentences[i : i + 10]) for i in range(0, _POOL, 10))
        lines = []
        for _ in range(400):
            if kind == "json":
                lines.append(maker.json_line()[1])
            elif kind == "csv":
                lines.append(maker.csv_row()[1])
            else:
                lines.append(maker.code_line()[1])
        return "\n".join(lines)

    return make


def _rates() -> dict[str, float]:
    return {
        k: _chars_per_token(f"verbatim:{k}", _sample(k)) for k in ("json", "csv", "codes", "prose")
    }


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) between ``a`` and ``b``."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _candidates(prediction: str) -> list[str]:
    """The whole answer and each of its lines, stripped of fences, quotes and bold marks."""
    text = _strip_fences(prediction)
    out = [text]
    for raw in text.splitlines():
        line = raw.strip()
        if line:
            out.append(line)
            out.append(line.strip(_QUOTES).strip())
    return out


def similarity(instance: Instance, prediction: str) -> float:
    """Normalised Levenshtein similarity in [0, 1] of the answer (or its best line) to the gold
    text; long answers are cut to a little over the gold's length first."""
    gold = str(instance.gold)
    best = 0.0
    for whole in _candidates(prediction):
        cand = whole[: 2 * len(gold) + 32]
        longest = max(len(gold), len(cand))
        value = 1.0 if longest == 0 else 1.0 - levenshtein(gold, cand) / longest
        best = max(best, value)
    return best


class VerbatimTask(_VariantTask):
    """Verbatim-copy questions; ``variant`` fixes the context kind."""

    name: str = "verbatim"
    variants = VARIANTS

    def generate(self, *, n: int, length: int, seed: int) -> list[Instance]:
        """``n`` instances of about ``length`` tokens each."""
        _check_args(self.name, n, length)
        out = []
        for index in range(n):
            variant = _pick_variant(self.name, VARIANTS, self.variant, index)
            rng = _rng(self.name, length, seed, index)
            context, question, gold, tokens = _build(variant, rng, length, _rates())
            out.append(
                Instance(
                    task=self.name,
                    id=f"{self.name}-{length}-{seed}-{index}",
                    question=question,
                    context=context,
                    gold=gold,
                    meta=_meta(
                        context=context,
                        cpt=len(context) / max(1.0, tokens),
                        seed=seed,
                        variant=variant,
                        index=index,
                    ),
                )
            )
        return out

    def score(self, instance: Instance, prediction: str) -> float:
        """1.0 if the answer, or one of its lines, is exactly the gold text (after stripping
        whitespace, code fences and quotes), else 0.0. See :func:`similarity` for partial credit."""
        gold = str(instance.gold)
        return 1.0 if gold in _candidates(prediction) else 0.0

    def similarity(self, instance: Instance, prediction: str) -> float:
        """:func:`similarity`, for runners that look the method up on the task."""
        return similarity(instance, prediction)
