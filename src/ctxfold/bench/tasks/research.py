"""Multi-hop research over a generated document collection, after DeepDive / BrowseComp-Plus.

Each instance is a seeded world of fictional entities (people, towns, companies, ships), one
document each: a title, structured ``Field: value`` lines and a few sentences of prose. Names come
from the first/last-name lists bundled with ``faker`` and the word lists bundled with
``wonderwords``. The question walks a chain of 2 or 3 documents (entity -> attribute -> related
entity -> answer), e.g. "In what year was the company that employs the mayor of the town where
the ship Northern Lark was built founded?".

Hard negatives are planted around every chain: near-duplicate names of the start and bridging
entities (one name part changed, different attributes), another entity of the start's type that
shares the bridging attribute value, and documents that mention the bridging entity in passing
without the answer.

``context`` is a dict ``{doc_id: text}``; its length is measured on :func:`corpus_text` (the
documents joined by blank lines). :func:`write_corpus` writes the documents as a JSONL corpus for
:func:`ctxfold.tools.corpus_tools`.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ctxfold.bench._types import Instance
from ctxfold.bench.tasks._common import (
    _chars_per_token,
    _check_args,
    _meta,
    _normalize,
    _parse_int,
    _pick_variant,
    _rng,
    _strip_fences,
    _VariantTask,
)
from ctxfold.bench.tasks.sniah import _words
from ctxfold.errors import CtxfoldError
from ctxfold.models import count_tokens

__all__ = [
    "FIELDS",
    "MIN_LENGTH",
    "VARIANTS",
    "ResearchTask",
    "corpus_text",
    "parse_fields",
    "write_corpus",
]

VARIANTS: tuple[str, ...] = ("2hop", "3hop")
"""Number of documents on the question's chain, cycled over by instance index."""

MIN_LENGTH = 1_500
"""The smallest length (tokens) a world with its chain and hard negatives fits in."""

KINDS: tuple[str, ...] = ("person", "town", "company", "ship")

FIELDS: dict[str, tuple[str, ...]] = {
    "person": ("Born", "Birthplace", "Occupation", "Employer"),
    "town": ("Founded", "Region", "Mayor", "Population"),
    "company": ("Founded", "Founder", "Headquarters", "Product", "Rival"),
    "ship": ("Launched", "Built in", "Owner", "Captain"),
}
"""The structured ``Field: value`` lines of each kind's document, in order."""

LINKS: dict[tuple[str, str], str] = {
    ("person", "Birthplace"): "town",
    ("person", "Employer"): "company",
    ("town", "Mayor"): "person",
    ("company", "Founder"): "person",
    ("company", "Headquarters"): "town",
    ("company", "Rival"): "company",
    ("ship", "Built in"): "town",
    ("ship", "Owner"): "company",
    ("ship", "Captain"): "person",
}
"""Fields whose value is another entity's name, and that entity's kind."""

_YEAR_FIELDS = frozenset({"Born", "Founded", "Launched"})
_ANSWER_FIELDS: dict[str, tuple[str, ...]] = {  # what a question may ask of the chain's end
    "person": ("Born", "Occupation", "Birthplace", "Employer"),
    "town": ("Founded", "Region", "Mayor"),
    "company": ("Founded", "Product", "Founder", "Headquarters"),
    "ship": ("Launched",),
}
_HOP_PHRASE: dict[tuple[str, str], str] = {
    ("person", "Birthplace"): "the birthplace of {x}",
    ("person", "Employer"): "the company that employs {x}",
    ("town", "Mayor"): "the mayor of {x}",
    ("company", "Founder"): "the founder of {x}",
    ("company", "Headquarters"): "the town where {x} is headquartered",
    ("company", "Rival"): "the main rival of {x}",
    ("ship", "Built in"): "the town where {x} was built",
    ("ship", "Owner"): "the company that owns {x}",
    ("ship", "Captain"): "the captain of {x}",
}
_START_PHRASE = {
    "person": "{name}",
    "town": "the town of {name}",
    "company": "the company {name}",
    "ship": "the ship {name}",
}
_ASK: dict[str, str] = {
    "Born": "In what year was {x} born?",
    "Founded": "In what year was {x} founded?",
    "Launched": "In what year was {x} launched?",
    "Occupation": "What is the occupation of {x}?",
    "Region": "In which region is {x}?",
    "Product": "What product is {x} best known for?",
}
_NAME_ASK = "What is the name of {x}?"

_COMPANY_SUFFIXES = ("Industries", "Holdings", "Works", "Trading", "Shipping", "Mills", "Foundry",
                     "Labs", "Group", "Brothers", "Textiles", "Freight", "Instruments", "Canning",
                     "Ironworks", "Outfitters")  # fmt: skip
_TOWN_PREFIXES = ("", "", "", "North ", "South ", "East ", "West ", "Port ", "New ", "Upper ",
                  "Lower ", "Fort ", "Lake ")  # fmt: skip
_TOWN_SUFFIXES = ("ford", "ton", "mouth", "port", "field", "haven", "bury", "wick", "stead",
                  "dale", "brook", "moor", "bridge", "ley")  # fmt: skip
_NEAR_SLOTS = {"person": (0,), "town": (0, 2), "company": (1,), "ship": (0, 1)}
_SHIP_TYPES = ("cargo ship", "schooner", "steamer", "trawler", "ferry", "clipper", "tanker")
_AVG_DOC_CHARS = 560  # a first guess at a document's size; _build trims or pads to the target
_FIELD_RE = re.compile(r"^([A-Z][A-Za-z ]*): (.+)$", re.MULTILINE)


@lru_cache(maxsize=1)
def _name_pools() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Faker's bundled en_US first names, last names and job titles (read, not sampled)."""
    try:
        from faker.providers.job.en_US import Provider as Jobs
        from faker.providers.person.en_US import Provider as People
    except ImportError:
        raise CtxfoldError("the research task needs faker: pip install faker") from None
    firsts = tuple(sorted({str(n) for n in People.first_names if str(n).isalpha()}))
    lasts = tuple(sorted({str(n) for n in People.last_names if str(n).isalpha()}))
    return firsts, lasts, tuple(sorted({str(j) for j in Jobs.jobs}))


@dataclass(slots=True)
class _Entity:
    kind: str
    parts: tuple[str, ...]
    name: str
    fields: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)  # prose sentences added for hard negatives


class _World:
    """Entities with unique names; references are names of other entities in the world."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.firsts, self.lasts, self.jobs = _name_pools()
        adjectives, nouns = _words()
        self.adjectives = tuple(a for a in adjectives if a.isalpha() and 3 <= len(a) <= 9)
        self.nouns = tuple(n for n in nouns if n.isalpha() and 3 <= len(n) <= 9)
        self.entities: list[_Entity] = []
        self.by_kind: dict[str, list[_Entity]] = {k: [] for k in KINDS}
        self.by_name: dict[str, _Entity] = {}

    # --- names -----------------------------------------------------------------------------

    def _parts(self, kind: str) -> tuple[str, ...]:
        rng = self.rng
        if kind == "person":
            return (rng.choice(self.firsts), rng.choice(self.lasts))
        if kind == "town":
            root = rng.choice(self.lasts)
            return (rng.choice(_TOWN_PREFIXES), root, rng.choice(_TOWN_SUFFIXES))
        if kind == "company":
            return (rng.choice(self.lasts), rng.choice(_COMPANY_SUFFIXES))
        return (rng.choice(self.adjectives).title(), rng.choice(self.nouns).title())

    @staticmethod
    def _join(kind: str, parts: tuple[str, ...]) -> str:
        if kind == "town":
            return f"{parts[0]}{parts[1]}{parts[2]}"
        return " ".join(parts)

    def _near(self, kind: str, parts: tuple[str, ...]) -> tuple[str, ...]:
        """``parts`` with one part redrawn: a near-duplicate name."""
        fresh = self._parts(kind)
        slot = self.rng.choice(_NEAR_SLOTS[kind])
        return tuple(fresh[i] if i == slot else p for i, p in enumerate(parts))

    def new(self, kind: str, like: _Entity | None = None) -> _Entity:
        for _ in range(200):
            parts = self._near(kind, like.parts) if like is not None else self._parts(kind)
            name = self._join(kind, parts)
            if name not in self.by_name:
                break
        else:  # pragma: no cover - the pools are far larger than any world
            raise CtxfoldError(f"research: ran out of unique {kind} names")
        entity = _Entity(kind, parts, name)
        self.entities.append(entity)
        self.by_kind[kind].append(entity)
        self.by_name[name] = entity
        return entity

    # --- attributes ------------------------------------------------------------------------

    def fill(self, entity: _Entity) -> None:
        """Give ``entity`` every field, linking to random entities of the right kind."""
        rng = self.rng
        for name in FIELDS[entity.kind]:
            target = LINKS.get((entity.kind, name))
            if target is not None:
                other = rng.choice(self.by_kind[target])
                if other is entity:
                    other = self.by_kind[target][self.by_kind[target].index(entity) - 1]
                entity.fields[name] = other.name
            elif name in _YEAR_FIELDS:
                low = {"Born": 1900, "Founded": 1650, "Launched": 1850}[name]
                entity.fields[name] = str(rng.randint(low, 2015))
            elif name == "Occupation":
                entity.fields[name] = rng.choice(self.jobs)
            elif name == "Region":
                entity.fields[name] = f"{rng.choice(self.lasts)} County"
            elif name == "Population":
                entity.fields[name] = f"{rng.randint(800, 400_000):,}"
            elif name == "Product":
                entity.fields[name] = f"{rng.choice(self.adjectives)} {rng.choice(self.nouns)}"

    def render(self, entity: _Entity) -> str:
        f = entity.fields
        lines = [f"Title: {entity.name}", f"Type: {entity.kind}"]
        lines += [f"{name}: {f[name]}" for name in FIELDS[entity.kind]]
        rng = random.Random(entity.name)  # prose wording depends on the name only
        # Other entities are named only in the field lines, so a name's own document is the one
        # that repeats it (BM25 finds it first); the prose restates the plain attributes.
        name, adj = entity.name, rng.choice(self.adjectives)
        if entity.kind == "person":
            job = f["Occupation"].lower()
            prose = (
                f"{name} was born in {f['Born']} and works as {_article(job)} {job}. "
                f"Colleagues describe {name} as {adj}. {entity.parts[0]} rarely gives interviews."
            )
        elif entity.kind == "town":
            prose = (
                f"{name} is a town in {f['Region']}, founded in {f['Founded']}, with about "
                f"{f['Population']} residents. Visitors to {name} remember its {adj} "
                f"{rng.choice(self.nouns)} market."
            )
        elif entity.kind == "company":
            prose = (
                f"{name} was founded in {f['Founded']} and is best known for its "
                f"{f['Product']}. Trade papers have called {name} {adj}."
            )
        else:
            kind = rng.choice(_SHIP_TYPES)
            prose = (
                f"The {name} is {_article(kind)} {kind} launched in {f['Launched']}. "
                f"Sailors call the {name} {adj}."
            )
        return "\n".join([*lines, "", " ".join([prose, *entity.extra])])


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _mention(rng: random.Random, entity: _Entity, other: str) -> str:
    return rng.choice(
        (
            f"Local records note that {entity.name} has ties to {other}.",
            f"A {rng.randint(1950, 2020)} newspaper piece linked {entity.name} with {other}.",
            f"{other} is mentioned in several letters kept with the {entity.name} papers.",
        )
    )


@dataclass(frozen=True, slots=True)
class _Chain:
    entities: tuple[_Entity, ...]
    links: tuple[str, ...]  # the linking field on each entity but the last
    ask: str  # the field asked of the last entity
    question: str
    answer: str


def _pick_chain(world: _World, rng: random.Random, hops: int) -> _Chain:
    while True:
        kind = rng.choice(KINDS)
        start = rng.choice(world.by_kind[kind])
        entities = [start]
        links: list[str] = []
        ok = True
        for _ in range(hops - 1):
            here = entities[-1]
            options = [f for f in FIELDS[here.kind] if (here.kind, f) in LINKS]
            name = rng.choice(options)
            nxt = world.by_name[here.fields[name]]
            if any(nxt is e for e in entities):
                ok = False
                break
            entities.append(nxt)
            links.append(name)
        if not ok:
            continue
        last = entities[-1]
        asks = [f for f in _ANSWER_FIELDS[last.kind] if last.fields[f] not in
                {e.name for e in entities}]  # fmt: skip
        ask = rng.choice(asks)
        phrase = _START_PHRASE[start.kind].format(name=start.name)
        for entity, link in zip(entities, links, strict=False):
            phrase = _HOP_PHRASE[(entity.kind, link)].format(x=phrase)
        if (last.kind, ask) in LINKS:
            question = _NAME_ASK.format(x=_HOP_PHRASE[(last.kind, ask)].format(x=phrase))
        else:
            question = _ASK[ask].format(x=phrase)
        return _Chain(tuple(entities), tuple(links), ask, question, last.fields[ask])


def _plant_negatives(world: _World, rng: random.Random, chain: _Chain) -> dict[str, list[str]]:
    """Hard negatives around ``chain``; returns their entity names by kind of negative."""
    start, bridge = chain.entities[0], chain.entities[1]
    on_chain = {e.name for e in chain.entities}
    negatives: dict[str, list[str]] = {"near_duplicates": [], "shared_bridge": [], "mentions": []}
    # Near-duplicate names of the start and the bridge, with their own (different) attributes.
    for like in (start, start, bridge):
        decoy = world.new(like.kind, like=like)
        world.fill(decoy)
        _differ(world, rng, decoy, like, avoid=on_chain)
        negatives["near_duplicates"].append(decoy.name)
    # Others of the start's kind that share the bridging value (e.g. more ships built in the town).
    link = chain.links[0]
    taken = on_chain | set(negatives["near_duplicates"])
    others = [e for e in world.by_kind[start.kind] if e.name not in taken]
    rng.shuffle(others)
    for other in others[:2]:
        other.fields[link] = bridge.name
        negatives["shared_bridge"].append(other.name)
    # Documents that mention the bridging entity (or the start) in passing.
    taken |= set(negatives["shared_bridge"])
    pool = [e for e in world.entities if e.name not in taken]
    for other in rng.sample(pool, min(3, len(pool))):
        other.extra.append(_mention(rng, other, rng.choice([bridge.name, start.name])))
        negatives["mentions"].append(other.name)
    return negatives


def _differ(
    world: _World, rng: random.Random, decoy: _Entity, like: _Entity, avoid: set[str]
) -> None:
    """Make every linked or year field of ``decoy`` differ from ``like``'s (and avoid the chain)."""
    for name in FIELDS[like.kind]:
        target = LINKS.get((like.kind, name))
        if target is not None:
            while decoy.fields[name] in {like.fields[name], decoy.name, *avoid}:
                decoy.fields[name] = rng.choice(world.by_kind[target]).name
        elif name in _YEAR_FIELDS and decoy.fields[name] == like.fields[name]:
            decoy.fields[name] = str(int(like.fields[name]) + rng.randint(1, 9))


def _build(
    rng: random.Random, target_chars: int, hops: int
) -> tuple[dict[str, str], dict[str, Any]]:
    world = _World(rng)
    n = max(12, round(target_chars / _AVG_DOC_CHARS))
    weights = {"person": 0.4, "town": 0.15, "company": 0.25, "ship": 0.2}
    for kind in KINDS:
        for _ in range(max(6, round(n * weights[kind]))):
            world.new(kind)
    for entity in list(world.entities):
        world.fill(entity)
    chain = _pick_chain(world, rng, hops)
    negatives = _plant_negatives(world, rng, chain)
    protected = {e.name for e in chain.entities} | {x for v in negatives.values() for x in v}
    texts = {e.name: world.render(e) for e in world.entities}
    total = sum(len(t) + 2 for t in texts.values())
    # Trim or pad (with fresh people and companies) to the target size.
    removable = [e for e in world.entities if e.name not in protected]
    rng.shuffle(removable)
    while total > target_chars * 1.02 and removable:
        gone = removable.pop()
        total -= len(texts.pop(gone.name)) + 2
    while total < target_chars * 0.98:
        extra = world.new(rng.choice(("person", "company")))
        world.fill(extra)
        texts[extra.name] = world.render(extra)
        total += len(texts[extra.name]) + 2
    names = list(texts)
    rng.shuffle(names)
    ids = {name: f"doc-{i:05d}" for i, name in enumerate(names)}
    docs = {ids[name]: texts[name] for name in names}
    info = {
        "chain": [ids[e.name] for e in chain.entities],
        "chain_entities": [e.name for e in chain.entities],
        "links": list(chain.links),
        "ask": chain.ask,
        "question": chain.question,
        "answer": chain.answer,
        "negatives": {k: [ids[x] for x in v if x in ids] for k, v in negatives.items()},
    }
    return docs, info


def corpus_text(context: Mapping[str, str]) -> str:
    """The documents of a ``research`` context joined by blank lines (what lengths measure)."""
    return "\n\n".join(context.values())


def write_corpus(instance: Instance, path: str | os.PathLike[str]) -> Path:
    """Write ``instance``'s documents as JSONL ``{"id", "text"}`` lines (for ``corpus_tools``)."""
    if not isinstance(instance.context, Mapping):
        raise CtxfoldError(f"write_corpus needs a research instance, not {instance.task!r}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as file:
        for doc_id, text in instance.context.items():
            file.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    return out


def _sample() -> str:
    docs, _ = _build(random.Random("ctxfold:research:calibration"), 400_000, 2)
    return corpus_text(docs)


class ResearchTask(_VariantTask):
    """Multi-hop questions over a generated entity corpus; ``variant`` fixes ``2hop``/``3hop``."""

    name: str = "research"
    variants = VARIANTS
    default_lengths: tuple[int, ...] = (32_000, 131_000, 1_000_000)

    def generate(self, *, n: int, length: int, seed: int) -> list[Instance]:
        """``n`` instances whose corpora are about ``length`` tokens each."""
        _check_args(self.name, n, length)
        if length < MIN_LENGTH:
            raise CtxfoldError(f"{self.name}: length must be at least {MIN_LENGTH} tokens")
        cpt = _chars_per_token("research", _sample)
        out: list[Instance] = []
        for index in range(n):
            rng = _rng(self.name, length, seed, index)
            variant = _pick_variant(self.name, VARIANTS, self.variant, index)
            hops = int(variant[0])
            docs, info = _build(rng, int(length * cpt), hops)
            text = corpus_text(docs)
            real = count_tokens(text)
            if abs(real - length) > 0.03 * length:  # small worlds tokenize a little differently
                rng = _rng(self.name, length, seed, index)
                docs, info = _build(rng, int(length * cpt * length / max(1, real)), hops)
                text = corpus_text(docs)
                real = count_tokens(text)
            out.append(
                Instance(
                    task=self.name,
                    id=f"{self.name}-{length}-{seed}-{index}",
                    question=info["question"],
                    context=docs,
                    gold=info["answer"],
                    meta=_meta(
                        context=text,
                        cpt=len(text) / max(1, real),  # so length_tokens is the exact count
                        seed=seed,
                        variant=variant,
                        index=index,
                        hops=hops,
                        n_docs=len(docs),
                        chain=info["chain"],
                        chain_entities=info["chain_entities"],
                        links=info["links"],
                        ask=info["ask"],
                        negatives=info["negatives"],
                    ),
                )
            )
        return out

    def score(self, instance: Instance, prediction: str) -> float:
        """1.0 if the normalised gold appears (as whole words) in the normalised answer; a year
        must be the answer's number exactly (see :func:`~ctxfold.bench.tasks._common._parse_int`).
        """
        gold = str(instance.gold)
        if re.fullmatch(r"\d{4}", gold):
            return 1.0 if _parse_int(prediction) == int(gold) else 0.0
        want = _normalize(gold)
        if not want:
            return 0.0
        got = _normalize(_strip_fences(prediction))
        return 1.0 if f" {want} " in f" {got} " else 0.0


def parse_fields(text: str) -> dict[str, str]:
    """The ``Field: value`` header lines of one document (``Title``, ``Type`` and its fields)."""
    header = text.split("\n\n", 1)[0]
    return {m.group(1): m.group(2).strip() for m in _FIELD_RE.finditer(header)}
