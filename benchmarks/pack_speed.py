"""How fast a local model labels lines with ``choices``, side by side in one run on the same
lines: twelve prompt layouts (one line per call as ``llm_batch`` sends it, the instruction first
in a fixed order or a rotation or as a system message, only the question part of each line,
packs of 4 to 16), then ``llm_batch`` itself through an ``RLM`` with ``choice_pack`` 1 and 16.
Also measures the engine's prefill rate, and what fraction of it each form reaches, and how far
each form's label counts are from the true ones (what OOLONG's questions are about). Used for
``benchmarks/results/pack-speed.md`` (issue 19, item 4).

    python benchmarks/pack_speed.py 'local:qwen2.5-coder-1.5b?window=8192' --n 32 --packs 1,16

The lines are TREC questions (``$CTXFOLD_TREC_DIR/TREC.test``, default ``../shared/data/trec``)
in the OOLONG-style format, with their true labels. Each form gets a new model server, so none
finds prompts another form left in the server's cache. The layouts are sent as many at a time as
the server has slots (4 unless the spec says ``&parallel=N``), as ``llm_batch`` does; in the
``RLM`` runs the root is scripted (it only calls ``llm_batch``), so the figures are the
sub-calls' alone.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ctxfold import RLM, Budget
from ctxfold.bench.tasks import TREC_LABELS, trec_dir
from ctxfold.choices import (
    choice_instruction,
    choice_prompt,
    match_choice,
    pack_max_tokens,
    pack_prompt,
    read_pack,
)
from ctxfold.models import Message, Model, resolve_model
from ctxfold.models.scripted import ScriptedModel

NAMES = list(TREC_LABELS.values())
LABEL_CODE = """
import json
lines = context.split("\\n")
labels = json.loads(question)
answers = llm_batch(lines, choices=labels)
answer["content"] = json.dumps(answers)
print(len(answers), "labels")
"""


@dataclass
class Row:
    pack: int
    seconds: float
    prompt: int  # prompt tokens sent
    cached: int  # of them, served from the server's prompt cache
    output: int
    calls: int
    right: int
    counts: Counter[str]


def _lines(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (label, line) pairs: TREC test questions in OOLONG's line format, dates sorted."""
    raw = (trec_dir() / "TREC.test").read_text(encoding="latin-1").splitlines()
    rows = [line.split(" ", 1) for line in raw if line.strip()]
    rng = random.Random(seed)
    picked = rng.sample(rows, n)
    out = []
    for i, (code, text) in enumerate(picked):
        line = f"Date: Mar {i * 28 // n + 1:02d}, 2023 || User: {rng.randrange(10000, 99999)} || "
        out.append((TREC_LABELS[code.split(":")[0]], line + f"Instance: {text.strip()}"))
    return out


def prefill_rate(model: Model, tokens: int = 1500) -> float:
    """Prompt tokens per second the engine computes for one new prompt of about ``tokens``."""
    rng = random.Random(time.monotonic_ns())
    words = ["river", "stone", "cloud", "green", "seven", "table", "light", "apple"]
    text = " ".join(f"{rng.choice(words)}{rng.randrange(100)}" for _ in range(tokens // 3))
    started = time.monotonic()
    usage = model.complete([{"role": "user", "content": text}], max_tokens=1).usage
    return (usage.input_tokens - usage.cached_tokens) / (time.monotonic() - started)


def _question(line: str) -> str:
    return line.rsplit("Instance: ", maxsplit=1)[-1]


def _first(text: str) -> str:
    """The instruction first, the choices in one fixed order (so every call shares it)."""
    return choice_instruction(NAMES).strip() + "\n\n" + text


def _rotated(text: str) -> str:
    """The instruction first, the choices in one of their cyclic rotations (drawn from the
    text): each choice comes first in a sixth of the calls, and a server keeps six heads."""
    k = int(hashlib.sha256(text.encode()).hexdigest(), 16) % len(NAMES)
    return choice_instruction(NAMES[k:] + NAMES[:k]).strip() + "\n\n" + text


def _system_first(order: list[str]) -> str:
    """The instruction as a system message, which every call of a batch shares."""
    return choice_instruction(order).strip() + " Reply with the answer only."


_SYSTEM = {  # layouts with a fixed system message, by letter
    "S": _system_first(NAMES),
    "R": _system_first(NAMES[::-1]),
    "T": "Choices: " + ", ".join(NAMES) + ".",
}


def _short_tail(text: str) -> str:
    return _question(text) + "\n\nAnswer with exactly one of the choices."


LAYOUTS: dict[str, tuple[int, Callable[[str], str]]] = {  # name: (items per call, prompt)
    "A: the line, then the instruction (llm_batch today)": (1, lambda t: choice_prompt(t, NAMES)),
    "B: the instruction first, then the line": (1, _first),
    "C: the instruction first, then the question part only": (1, lambda t: _first(_question(t))),
    "D: the question part only, then the instruction": (
        1,
        lambda t: choice_prompt(_question(t), NAMES),
    ),
    "H: the instruction first (choices in a rotation), then the line": (1, _rotated),
    "I: the instruction first (choices in a rotation), then the question part only": (
        1,
        lambda t: _rotated(_question(t)),
    ),
    "S: the instruction as a system message (one fixed order), then the question part only": (
        1,
        _question,
    ),
    "R: as S, the choices in the reverse order": (1, _question),
    "T: the choices as a system message, then the question part and a short instruction": (
        1,
        _short_tail,
    ),
    "E: packs of 4 whole lines": (4, lambda t: t),
    "F: packs of 8 question parts": (8, _question),
    "G: packs of 16 question parts": (16, _question),
}


def layout(model: Model, items: list[tuple[str, str]], name: str) -> Row:
    """The lines labelled with one layout, as many calls in flight as the server has slots."""
    size, shape = LAYOUTS[name]
    system = _SYSTEM.get(name[0])
    texts = [shape(line) for _, line in items]
    groups = [texts[i : i + size] for i in range(0, len(texts), size)]

    def ask(group: list[str]) -> list[str | None]:
        if size == 1:
            head: list[Message] = [{"role": "system", "content": system}] if system else []
            user: Message = {"role": "user", "content": group[0]}
            reply = model.complete([*head, user], choices=NAMES)
            usages.append(reply.usage)
            return [match_choice(reply.text, NAMES)]
        prompt = pack_prompt(group, NAMES)
        reply = model.complete(
            [{"role": "user", "content": prompt}],
            choices=NAMES,
            choice_items=len(group),
            max_tokens=pack_max_tokens(len(group), NAMES),
        )
        usages.append(reply.usage)
        return read_pack(reply.text, len(group), NAMES)

    usages: list[Any] = []
    started = time.monotonic()
    with ThreadPoolExecutor(getattr(model, "parallel", 4)) as pool:
        got = [label for labels in pool.map(ask, groups) for label in labels]
    seconds = time.monotonic() - started
    right = sum(g == a for (g, _), a in zip(items, got, strict=True))
    return Row(
        0,
        seconds,
        sum(u.input_tokens for u in usages),
        sum(u.cached_tokens for u in usages),
        sum(u.output_tokens for u in usages),
        len(usages),
        right,
        Counter(label or "none" for label in got),
    )


def label(model: Model, items: list[tuple[str, str]], pack: int) -> Row:
    root = ScriptedModel([f"```python{LABEL_CODE}```", '```python\nanswer["ready"] = True\n```'])
    rlm = RLM(root, sub_model=model, budget=Budget(iterations=4), choice_pack=pack)
    context = "\n".join(line for _, line in items)
    started = time.monotonic()
    result = rlm.run(json.dumps(NAMES), context)
    seconds = time.monotonic() - started
    rlm.close()
    got = json.loads(result.answer)
    sub = result.usage.sub
    right = sum(g == a for (g, _), a in zip(items, got, strict=True))
    return Row(
        pack,
        seconds,
        sub.input_tokens,
        sub.cached_tokens,
        sub.output_tokens,
        sub.calls,
        right,
        Counter(got),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="local:qwen2.5-coder-1.5b?window=8192")
    parser.add_argument("--n", type=int, default=32, help="lines to label")
    parser.add_argument("--layouts", default="ABCDHISRTEFG", help="which layouts, by letter")
    parser.add_argument("--packs", default="1,16", help="choice_pack values, compared in order")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    model = resolve_model(args.model)
    items = _lines(args.n, args.seed)
    gold = Counter(g for g, _ in items)
    print(f"{model.name}: {args.n} lines; true counts {dict(sorted(gold.items()))}", flush=True)
    rates = [prefill_rate(model) for _ in range(2)]
    print(f"engine prefill rate: {rates[0]:.1f}, {rates[1]:.1f} prompt tokens/s", flush=True)
    model.close()
    first: Row | None = None
    for name in [n for n in LAYOUTS if n[0] in args.layouts]:
        with _fresh(args.model) as model:  # a new server: no prompt cached by another form
            row = layout(model, items, name)
        first = first or row
        _report(name, row, gold, max(rates), first)
    first = None
    for pack in [int(p) for p in args.packs.split(",") if p]:
        with _fresh(args.model) as model:
            row = label(model, items, pack)
        first = first or row
        _report(f"llm_batch, choice_pack={pack}", row, gold, max(rates), first)


@contextlib.contextmanager
def _fresh(spec: str) -> Iterator[Model]:
    model = resolve_model(spec)
    try:
        yield model
    finally:
        model.close()


def _report(name: str, row: Row, gold: Counter[str], rate: float, first: Row) -> None:
    n = gold.total()
    moved = sum(abs(row.counts[k] - gold[k]) for k in {*gold, *row.counts}) // 2
    computed = row.prompt - row.cached
    print(
        f"{name}: {row.seconds:.1f} s ({first.seconds / row.seconds:.2f}x the first), "
        f"{row.calls} calls, {row.right}/{n} right; per line {row.prompt / n:.1f} prompt tokens "
        f"({computed / n:.1f} not cached), {row.output / n:.1f} output tokens; prefill "
        f"{computed / row.seconds / rate:.0%} of the engine rate",
        flush=True,
    )
    print(f"  labels: {dict(sorted(row.counts.items()))}; {moved} lines off the true counts")


if __name__ == "__main__":
    main()
