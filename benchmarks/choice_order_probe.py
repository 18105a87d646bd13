"""Does the order of the choices in the instruction change what a sub-model answers? 60 TREC
questions (10 per label, from ``TREC.train``, seed 11), each wrapped as an OOLONG line, labelled
one per call with ``choices`` three ways: the labels always in one order, always reversed, and in
the order ``llm_batch`` uses (drawn from each prompt's text). Prints the accuracy and how often
each label was answered. Used for ``benchmarks/results/local-quality.md`` (round 3).

    python benchmarks/choice_order_probe.py 'local:qwen2.5-coder-1.5b?window=8192'

Reads ``$CTXFOLD_TREC_DIR/TREC.train`` (default ``../shared/data/trec``).
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ctxfold.bench.tasks import TREC_LABELS, trec_dir
from ctxfold.choices import choice_instruction, choice_prompt, match_choice
from ctxfold.models import resolve_model

NAMES = list(TREC_LABELS.values())
PER_LABEL = 10


def _questions() -> list[tuple[str, str]]:
    lines = (trec_dir() / "TREC.train").read_text(encoding="latin-1").splitlines()
    rows = [line.split(" ", 1) for line in lines if line.strip()]
    random.Random(11).shuffle(rows)
    taken: Counter[str] = Counter()
    items = []
    for code, text in rows:
        label = TREC_LABELS[code.split(":")[0]]
        if taken[label] < PER_LABEL:
            taken[label] += 1
            items.append((label, text.strip()))
    return items


def _line(question: str, i: int) -> str:
    return f"Date: Mar {i % 28 + 1:02d}, 2023 || User: {10000 + i * 37} || Instance: {question}"


def main(spec: str) -> None:
    model = resolve_model(spec)
    items = _questions()
    forms: list[tuple[str, Callable[[str], str]]] = [
        ("one order (abbreviation first)", lambda t: t + choice_instruction(NAMES)),
        ("reversed (abbreviation last)", lambda t: t + choice_instruction(NAMES[::-1])),
        ("drawn from each prompt (what llm_batch sends)", lambda t: choice_prompt(t, NAMES)),
    ]
    print(f"{model.name}: {len(items)} TREC questions, {PER_LABEL} per label")
    for name, build in forms:
        started = time.monotonic()
        prompts = [build(_line(q, i)) for i, (_, q) in enumerate(items)]
        with ThreadPoolExecutor(4) as pool:  # the way llm_batch sends them: in parallel
            replies = list(
                pool.map(
                    lambda p: model.complete([{"role": "user", "content": p}], choices=NAMES).text,
                    prompts,
                )
            )
        got = [match_choice(r, NAMES) for r in replies]
        right = sum(1 for (gold, _), label in zip(items, got, strict=True) if label == gold)
        answered = Counter(label or "none" for label in got)
        print(f"- {name}: {right}/{len(items)} right ({time.monotonic() - started:.0f} s)")
        print(f"  answers per label: {dict(sorted(answered.items()))}", flush=True)
    model.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "local:qwen2.5-coder-1.5b?window=8192")
