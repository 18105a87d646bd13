"""How well a model labels TREC questions by itself, in four prompt forms: the sub-call OOLONG
needs. Used for ``benchmarks/results/local-quality.md``.

    python benchmarks/label_probe.py 'local?window=8192'
    python benchmarks/label_probe.py 'local:qwen2.5-coder-1.5b?window=8192'
    python benchmarks/label_probe.py 'local:qwen2.5-coder-1.5b?window=8192' --choices-only

Reads ``$CTXFOLD_TREC_DIR/TREC.test`` (default ``../shared/data/trec``); 40 questions, seed 5.
"""

from __future__ import annotations

import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ctxfold.bench.tasks import TREC_LABELS, trec_dir
from ctxfold.choices import choice_prompt, match_choice
from ctxfold.models import resolve_model

NAMES = list(TREC_LABELS.values())
GROUP = 20
# Written by the 1.5B root (oolong_root_probe.py, seed 1) for llm_batch(choices={...}).
ROOT_NOTES = [
    "short codes, acronyms, abbreviations",
    "definitions, explanations, descriptions",
    "objects, people, places, things",
    "individuals, people, human beings",
    "places, locations, geographical areas",
    "numbers, figures, measurements",
]


def _questions(n: int = 40) -> list[tuple[str, str]]:
    lines = (trec_dir() / "TREC.test").read_text(encoding="latin-1").splitlines()
    rows = [line.split(" ", 1) for line in lines if line.strip()]
    random.Random(5).shuffle(rows)
    return [(TREC_LABELS[code.split(":")[0]], text.strip()) for code, text in rows[:n]]


def _label_in(text: str) -> str | None:
    """The label named first in ``text`` (by its first word)."""
    lower = text.lower()
    found = [(lower.find(n.split()[0]), n) for n in NAMES if n.split()[0] in lower]
    return min(found)[1] if found else None


def _numbered(reply: str) -> list[str | None]:
    got = {int(n): _label_in(rest) for n, rest in re.findall(r"(\d+)\s*[:.)-]\s*(.+)", reply)}
    return [got.get(i + 1) for i in range(GROUP)]


def main(spec: str, *, choices_only: bool = False) -> None:
    model = resolve_model(spec)
    items = _questions()
    head = "Labels: " + ", ".join(NAMES) + "."
    groups = [items[i : i + GROUP] for i in range(0, len(items), GROUP)]
    forms: list[tuple[str, list[str], Callable[[str], list[str | None]]]] = [
        (
            f"one label per line, {GROUP} lines a call (the demonstration's form)",
            [
                f"Give the label of each line: {', '.join(NAMES)}. Write one label per line, "
                "nothing else.\n\n" + "\n".join(q for _, q in g)
                for g in groups
            ],
            lambda r: [_label_in(line) for line in r.splitlines() if line.strip()],
        ),
        (
            f"numbered lines in, 'N: label' out, {GROUP} a call",
            [
                f"{head}\nFor each numbered question write 'N: label'.\n\n"
                + "\n".join(f"{j + 1}. {q}" for j, (_, q) in enumerate(g))
                for g in groups
            ],
            _numbered,
        ),
        (
            "one question a call",
            [
                f"{head}\nWhich label fits this question? Answer with the label only.\n\n"
                f"Question: {q}"
                for _, q in items
            ],
            lambda r: [_label_in(r)],
        ),
    ]
    print(f"{model.name}: {len(items)} TREC questions")
    for name, prompts, parse in [] if choices_only else forms:
        started, got = time.monotonic(), []
        for prompt in prompts:
            got += parse(model.complete([{"role": "user", "content": prompt}]).text)
        _report(name, items, got, started)
    # What llm_batch(questions, choices=...) sends (a grammar for the local model): with a list,
    # and with a dict of the descriptions the 1.5B root wrote on the development split.
    for name, notes in (
        ("one question a call, choices (text first, then the choices)", None),
        ("one question a call, choices with the 1.5B root's descriptions", ROOT_NOTES),
    ):
        started = time.monotonic()
        prompts = [choice_prompt(q, NAMES, notes) for _, q in items]
        with ThreadPoolExecutor(4) as pool:  # the way llm_batch sends them: in parallel
            replies = pool.map(
                lambda p: model.complete([{"role": "user", "content": p}], choices=NAMES).text,
                prompts,
            )
            got = [match_choice(r, NAMES) for r in replies]
        _report(name, items, got, started)
        print(f"  answers per label: {dict(Counter(got))}", flush=True)


def _report(name: str, items: list[tuple[str, str]], got: list[str | None], started: float) -> None:
    right = sum(1 for (gold, _), label in zip(items, got, strict=False) if label == gold)
    print(f"- {name}: {right}/{len(items)} right ({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--choices-only"]
    main(args[0] if args else "local?window=8192", choices_only="--choices-only" in sys.argv)
