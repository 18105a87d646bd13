"""The ``research`` task: a seeded multi-hop corpus, its chains re-walked independently."""

from __future__ import annotations

import json
import re
import time
from difflib import SequenceMatcher
from pathlib import Path

import pytest

from ctxfold.bench._types import Instance
from ctxfold.bench.tasks.research import ResearchTask, corpus_text, parse_fields, write_corpus
from ctxfold.errors import CtxfoldError
from ctxfold.models._tokens import count_tokens
from ctxfold.tools import corpus_tools

SMALL = 3_000
LINE = re.compile(r"^([A-Z][A-Za-z ]*): (.+)$")
HIT = re.compile(r"^\d+\. \[([^\]]+)\]", re.MULTILINE)
PHRASE = {  # the words a question uses for each linking field
    "Birthplace": "birthplace of",
    "Employer": "company that employs",
    "Mayor": "mayor of",
    "Founder": "founder of",
    "Headquarters": "is headquartered",
    "Rival": "rival of",
    "Built in": "was built",
    "Owner": "company that owns",
    "Captain": "captain of",
}


def fields(text: str) -> dict[str, str]:
    """The header block of a document: its ``Field: value`` lines up to the first blank line."""
    out: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        m = LINE.match(line)
        assert m, line
        out[m.group(1)] = m.group(2)
    return out


def near_duplicate(a: str, b: str) -> bool:
    """Names one edit of a name part apart: a word in common or mostly the same letters."""
    return bool(set(a.split()) & set(b.split())) or SequenceMatcher(None, a, b).ratio() >= 0.6


def prose(text: str) -> str:
    return text.split("\n\n", 1)[1]


def titles(inst: Instance) -> dict[str, str]:
    by_title = {fields(t)["Title"]: doc_id for doc_id, t in inst.context.items()}
    assert len(by_title) == len(inst.context), "titles are unique"
    return by_title


@pytest.fixture(scope="module")
def instances() -> list[Instance]:
    return ResearchTask().generate(n=8, length=SMALL, seed=3)


def test_generation_is_deterministic() -> None:
    task = ResearchTask()
    a = task.generate(n=3, length=SMALL, seed=7)
    assert a == task.generate(n=3, length=SMALL, seed=7)
    assert len({x.id for x in a}) == 3
    assert task.generate(n=1, length=SMALL, seed=7)[0] == a[0]  # instance i does not depend on n
    assert task.generate(n=1, length=SMALL, seed=8)[0].context != a[0].context
    assert [x.meta["variant"] for x in a] == ["2hop", "3hop", "2hop"]
    assert {x.meta["hops"] for x in ResearchTask("3hop").generate(n=2, length=SMALL, seed=1)} == {3}


@pytest.mark.parametrize("length", [1_500, SMALL, 12_000])
def test_length_within_ten_percent_and_meta(length: int) -> None:
    for inst in ResearchTask().generate(n=3, length=length, seed=1):
        assert isinstance(inst.context, dict) and inst.task == "research" and inst.question
        text = corpus_text(inst.context)
        real = count_tokens(text)
        assert abs(real - length) <= 0.1 * length, real
        assert inst.meta["length_chars"] == len(text)
        assert inst.meta["length_tokens"] == real
        assert inst.meta["n_docs"] == len(inst.context)
        assert inst.meta["seed"] == 1 and inst.meta["hops"] == len(inst.meta["chain"])
        json.dumps(inst.context)  # what the base method sends


def test_chain_rederived_from_the_documents(instances: list[Instance]) -> None:
    for inst in instances:
        by_title = titles(inst)
        start = inst.meta["chain_entities"][0]
        assert start in inst.question
        doc_id = by_title[start]
        walked = [doc_id]
        for link in inst.meta["links"]:
            assert PHRASE[link] in inst.question
            doc_id = by_title[fields(inst.context[doc_id])[link]]
            walked.append(doc_id)
        assert walked == inst.meta["chain"]
        assert len(set(walked)) == len(walked) == inst.meta["hops"]
        answer = fields(inst.context[walked[-1]])[inst.meta["ask"]]
        assert answer == inst.gold
        assert inst.gold not in inst.question


def test_hard_negatives_are_present(instances: list[Instance]) -> None:
    for inst in instances:
        chain = inst.meta["chain"]
        start, bridge = (fields(inst.context[d]) for d in chain[:2])
        link = inst.meta["links"][0]
        outside = {d: fields(t) for d, t in inst.context.items() if d not in chain}
        # another entity of the start's kind shares the bridging value
        assert any(
            f["Type"] == start["Type"] and f.get(link) == bridge["Title"] for f in outside.values()
        )
        # near-duplicate names of the start: same kind, a name part in common, another answer path
        near = [
            f
            for f in outside.values()
            if f["Type"] == start["Type"]
            and f["Title"] != start["Title"]
            and near_duplicate(f["Title"], start["Title"])
        ]
        assert any(f[link] != bridge["Title"] for f in near)
        # documents that mention the bridge or the start in passing
        assert any(
            bridge["Title"] in prose(t) or start["Title"] in prose(t)
            for d, t in inst.context.items()
            if d not in chain
        )
        assert set(inst.meta["negatives"]) == {"near_duplicates", "shared_bridge", "mentions"}


def test_write_corpus_round_trips_and_search_finds_the_first_hop(tmp_path: Path) -> None:
    for inst in ResearchTask().generate(n=4, length=SMALL, seed=11):
        path = write_corpus(inst, tmp_path / "corpora" / f"{inst.id}.jsonl")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert {r["id"]: r["text"] for r in rows} == inst.context
        search, read, _ = corpus_tools(path, cache_dir=tmp_path / "cache")
        found = HIT.findall(search.function(query=inst.meta["chain_entities"][0], k=3))
        assert inst.meta["chain"][0] in found
        first = inst.meta["chain"][0]
        assert inst.context[first][:50] in read.function(doc_id=first, length=50)


def test_write_corpus_rejects_text_contexts(tmp_path: Path) -> None:
    inst = Instance(task="sniah", id="x", question="q", context="text", gold="1")
    with pytest.raises(CtxfoldError):
        write_corpus(inst, tmp_path / "c.jsonl")


def test_too_short_and_bad_variant_raise() -> None:
    with pytest.raises(CtxfoldError):
        ResearchTask().generate(n=1, length=500, seed=0)
    with pytest.raises(CtxfoldError):
        ResearchTask("4hop")


def _inst(gold: str) -> Instance:
    return Instance(task="research", id="x", question="q", context={}, gold=gold)


@pytest.mark.parametrize(
    ("gold", "prediction", "score"),
    [
        ("1921", "1921", 1.0),
        ("1921", "It was founded in 1921.", 1.0),
        ("1921", "The mayor was born in 1950. Final answer: 1921", 1.0),
        ("1921", "1922", 0.0),
        ("1921", "19210", 0.0),
        ("1921", "around 1920", 0.0),
        ("1921", "", 0.0),
        ("Anne Soto", "The mayor is **Anne Soto**.", 1.0),
        ("Anne Soto", "anne  soto", 1.0),
        ("Anne Soto", "```\nAnne Soto\n```", 1.0),
        ("Anne Soto", "Anne Sotomayor", 0.0),
        ("Anne Soto", "Joanne Soto", 0.0),
        ("Anne Soto", "Soto", 0.0),
        ("Accountant, chartered", "an accountant (chartered)", 1.0),
        ("North Ellisford", "Ellisford", 0.0),
        ("North Ellisford", "", 0.0),
    ],
)
def test_scorer_edge_cases(gold: str, prediction: str, score: float) -> None:
    assert ResearchTask().score(_inst(gold), prediction) == score


def test_generated_gold_scores_one(instances: list[Instance]) -> None:
    task = ResearchTask()
    for inst in instances:
        assert task.score(inst, f"The answer is {inst.gold}.") == 1.0
        assert task.score(inst, "I could not find it.") == 0.0


def test_default_lengths_and_a_131k_instance_is_quick() -> None:
    task = ResearchTask()
    assert task.default_lengths == (32_000, 131_000, 1_000_000)
    task.generate(n=1, length=SMALL, seed=0)  # calibration out of the timing
    started = time.perf_counter()
    (inst,) = task.generate(n=1, length=131_000, seed=0)
    assert time.perf_counter() - started < 5.0
    assert inst.meta["n_docs"] > 1_000
    assert abs(inst.meta["length_tokens"] - 131_000) <= 13_100


def test_parse_fields_matches_the_independent_parser(instances: list[Instance]) -> None:
    for text in list(instances[0].context.values())[:50]:
        assert parse_fields(text) == fields(text)
