"""Math over data: exact integer aggregates of a generated table that need real computation.

The context is a CSV table ``item_id,qty,price_cents,category,warehouse`` of thousands of rows.
Questions: revenue of a category (sum of qty * price_cents), filtered quantity sums, a product
modulo a prime, a prime count among item ids in a range, and a pair-counting combinatorics
question. Gold answers are exact integers; the score is exact match on the answer's integer.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from ctxfold.bench._types import Instance
from ctxfold.bench.tasks._common import (
    _chars_per_token,
    _check_args,
    _meta,
    _parse_int,
    _pick_variant,
    _rng,
    _VariantTask,
)

__all__ = ["CATEGORIES", "HEADER", "VARIANTS", "WAREHOUSES", "MathTask", "is_prime"]

VARIANTS: tuple[str, ...] = ("revenue", "filtered_qty", "mod_product", "prime_ids", "pair_count")
"""Question kinds, cycled over by instance index."""

HEADER = "item_id,qty,price_cents,category,warehouse"
CATEGORIES = ("tools", "garden", "toys", "books", "kitchen", "sports", "office", "audio")
WAREHOUSES = ("north", "south", "east", "west", "central")
_MOD = 1_000_000_007


@dataclass(frozen=True, slots=True)
class _Item:
    item_id: int
    qty: int
    price_cents: int
    category: str
    warehouse: str

    def line(self) -> str:
        return f"{self.item_id},{self.qty},{self.price_cents},{self.category},{self.warehouse}"


def is_prime(n: int) -> bool:
    """Deterministic primality for the ids used here (trial division by 6k +/- 1)."""
    if n < 2:
        return False
    if n % 2 == 0 or n % 3 == 0:
        return n in (2, 3)
    k = 5
    while k * k <= n:
        if n % k == 0 or n % (k + 2) == 0:
            return False
        k += 6
    return True


def _table(rng: random.Random, target_chars: int) -> list[_Item]:
    items: list[_Item] = []
    used: set[int] = set()
    size = len(HEADER) + 1
    while size < target_chars:
        item_id = rng.randrange(100_000, 1_000_000)
        if item_id in used:
            continue
        used.add(item_id)
        item = _Item(
            item_id,
            rng.randint(1, 500),
            rng.randint(50, 99_999),
            rng.choice(CATEGORIES),
            rng.choice(WAREHOUSES),
        )
        items.append(item)
        size += len(item.line()) + 1
    return items


def _ask(variant: str, items: list[_Item], rng: random.Random) -> tuple[str, int]:
    category = rng.choice(CATEGORIES)
    warehouse = rng.choice(WAREHOUSES)
    if variant == "revenue":
        gold = sum(i.qty * i.price_cents for i in items if i.category == category)
        return (
            f"What is the total revenue in cents of the category '{category}', i.e. the sum of "
            "qty * price_cents over its rows?",
            gold,
        )
    if variant == "filtered_qty":
        limit = rng.choice((10_000, 25_000, 50_000, 75_000))
        gold = sum(i.qty for i in items if i.warehouse == warehouse and i.price_cents > limit)
        return (
            f"What is the sum of qty over the rows of warehouse '{warehouse}' whose price_cents "
            f"is greater than {limit}?",
            gold,
        )
    if variant == "mod_product":
        gold = 1
        for i in items:
            if i.category == category and i.warehouse == warehouse:
                gold = gold * i.qty % _MOD
        return (
            f"What is the product of qty over the rows with category '{category}' and warehouse "
            f"'{warehouse}', modulo {_MOD}? (An empty product is 1.)",
            gold,
        )
    if variant == "prime_ids":
        low = rng.randrange(100_000, 700_000)
        high = low + rng.choice((100_000, 200_000, 300_000))
        gold = sum(1 for i in items if low <= i.item_id <= high and is_prime(i.item_id))
        return (
            f"How many rows have an item_id that is a prime number between {low} and {high} "
            "(inclusive)?",
            gold,
        )
    # pair_count: unordered pairs of distinct rows of one category whose qty sum to a target
    qtys = Counter(i.qty for i in items if i.category == category)
    total = rng.randint(200, 700)
    pairs = 0
    for q, k in qtys.items():
        other = total - q
        if q < other:
            pairs += k * qtys.get(other, 0)
        elif q == other:
            pairs += k * (k - 1) // 2
    return (
        f"How many unordered pairs of two different rows, both of category '{category}', have "
        f"qty values that add up to exactly {total}?",
        pairs,
    )


def _sample_text() -> str:
    items = _table(random.Random("ctxfold:math:calibration"), 100_000)
    return "\n".join([HEADER, *(i.line() for i in items)])


class MathTask(_VariantTask):
    """Exact-aggregate questions over a generated table; ``variant`` fixes the question kind."""

    name: str = "math"
    variants = VARIANTS

    def generate(self, *, n: int, length: int, seed: int) -> list[Instance]:
        """``n`` instances of about ``length`` tokens each."""
        _check_args(self.name, n, length)
        cpt = _chars_per_token("math", _sample_text)
        out = []
        for index in range(n):
            rng = _rng(self.name, length, seed, index)
            variant = _pick_variant(self.name, VARIANTS, self.variant, index)
            items = _table(rng, int(length * cpt))
            question, gold = _ask(variant, items, rng)
            context = "\n".join([HEADER, *(i.line() for i in items)])
            out.append(
                Instance(
                    task=self.name,
                    id=f"{self.name}-{length}-{seed}-{index}",
                    question=(
                        "The context is a CSV table with the header "
                        f"'{HEADER}'.\n\n{question} Answer with the exact integer."
                    ),
                    context=context,
                    gold=gold,
                    meta=_meta(
                        context=context,
                        cpt=cpt,
                        seed=seed,
                        variant=variant,
                        index=index,
                        rows=len(items),
                    ),
                )
            )
        return out

    def score(self, instance: Instance, prediction: str) -> float:
        """1.0 if the answer's integer equals the gold one, else 0.0."""
        return 1.0 if _parse_int(prediction) == int(instance.gold) else 0.0
