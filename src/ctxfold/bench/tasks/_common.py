"""Helpers shared by the task generators: seeding, length calibration, meta and answer parsing."""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ctxfold.errors import CtxfoldError
from ctxfold.models import count_tokens

_CPT: dict[str, float] = {}
_CPT_LOCK = threading.Lock()

_FENCE_RE = re.compile(r"^\s*```[^\n]*\n(.*?)\n?```\s*$", re.DOTALL)
_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_INT_RE = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?![\d])|(?<![\w.])-?\d+")
_ANSWER_MARK_RE = re.compile(
    r"(?:final\s+answer|answer\s+is|answer\s*[:=]|result\s+is|result\s*[:=]|total\s+is)",
    re.IGNORECASE,
)


def _rng(task: str, length: int, seed: int, index: int, salt: str = "") -> random.Random:
    """A generator for one instance: the same (task, length, seed, index) always gives the same
    stream, across processes (string seeds are hashed with SHA-512, not ``hash()``)."""
    return random.Random(f"ctxfold:{task}:{length}:{seed}:{index}:{salt}")


def _check_args(task: str, n: int, length: int) -> None:
    if n < 0:
        raise CtxfoldError(f"{task}: n must be >= 0, got {n}")
    if length < 100:
        raise CtxfoldError(f"{task}: length must be at least 100 tokens, got {length}")


def _chars_per_token(key: str, sample: Callable[[], str]) -> float:
    """Characters per token of the text a generator makes, measured once on ``sample()``."""
    cpt = _CPT.get(key)
    if cpt is None:
        text = sample()
        cpt = len(text) / max(1, count_tokens(text))
        with _CPT_LOCK:
            _CPT[key] = cpt
    return cpt


def _meta(
    *, context: str, cpt: float, seed: int, variant: str, index: int, **extra: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "length_chars": len(context),
        "length_tokens": round(len(context) / cpt),
        "seed": seed,
        "variant": variant,
        "index": index,
    }
    meta.update(extra)
    return meta


def _pick_variant(task: str, variants: Sequence[str], fixed: str | None, index: int) -> str:
    if fixed is not None:
        return fixed
    return variants[index % len(variants)]


def _validate_variant(task: str, variants: Sequence[str], variant: str | None) -> str | None:
    if variant is not None and variant not in variants:
        raise CtxfoldError(
            f"{task}: unknown variant {variant!r}; choose one of: {', '.join(variants)}"
        )
    return variant


class _VariantTask:
    """What every task shares: a name, its question variants, and an optional fixed variant."""

    name: str
    variants: Sequence[str]
    default_lengths: tuple[int, ...] = (8_000, 32_000, 131_000)

    def __init__(self, variant: str | None = None) -> None:
        self.variant = _validate_variant(self.name, self.variants, variant)


def _strip_fences(text: str) -> str:
    """``text`` without a ``<think>`` block, surrounding whitespace and one enclosing code fence."""
    text = _THINK_RE.sub("", text).strip()
    match = _FENCE_RE.match(text)
    if match:
        return match.group(1).strip()
    return text


def _normalize(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed."""
    text = re.sub(r"[^\w\s]", " ", text.lower().replace("_", " "))
    return " ".join(text.split())


def _parse_int(text: str) -> int | None:
    """The answer's integer: the first one after the last "answer is"/"answer:" marker if there is
    one, else the first integer in the text. Thousands separators (``1,234``) are accepted."""
    text = _strip_fences(text).replace("**", "").replace("`", "")
    marks = list(_ANSWER_MARK_RE.finditer(text))
    if marks:
        found = _INT_RE.search(text, marks[-1].end())
        if found:
            return int(found.group(0).replace(",", ""))
    found = _INT_RE.search(text)
    if found is None:
        return None
    return int(found.group(0).replace(",", ""))
