"""CodeQA-like multiple choice over the CPython standard library installed on this machine.

The context is whole module files, each under a ``# ===== file: <path> =====`` header, chosen in a
seeded order from ``sysconfig.get_paths()["stdlib"]`` (tests, idlelib, site-packages and the like
left out). Questions, each checked with :mod:`ast` over the files in the context: which class
defines a method, the default of a parameter, which file defines a function, which file calls a
function. Four options A-D; distractors are sibling names from the same context.
"""

from __future__ import annotations

import ast
import os
import random
import re
import sysconfig
from collections import defaultdict
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from ctxfold.bench._types import Instance
from ctxfold.bench.tasks._common import (
    _check_args,
    _meta,
    _normalize,
    _pick_variant,
    _rng,
    _strip_fences,
    _VariantTask,
)
from ctxfold.errors import CtxfoldError
from ctxfold.models import count_tokens

__all__ = ["LETTERS", "VARIANTS", "CodeQATask", "parse_choice"]

VARIANTS: tuple[str, ...] = ("method_class", "param_default", "defines_function", "calls_function")
"""Question kinds, cycled over by instance index (the next kind is used when one has no
candidate in a small context)."""

LETTERS = ("A", "B", "C", "D")

_SKIP_DIRS = {
    "test", "tests", "idlelib", "idle_test", "site-packages", "dist-packages", "__pycache__",
    "lib2to3", "turtledemo", "ensurepip", "venv",
}  # fmt: skip
_MAX_FILE_CHARS = 250_000


@dataclass(frozen=True, slots=True)
class _Facts:
    """What one module defines and calls, read with :mod:`ast`."""

    classes: tuple[tuple[str, frozenset[str], frozenset[str]], ...]  # top-level: name, methods,
    # every member name (methods, nested classes, attributes)
    all_definers: tuple[frozenset[str], ...]  # member names of every class, nested ones too
    functions: frozenset[str]  # top-level function names
    defined_anywhere: frozenset[str]  # every def/class name and module-level assignment
    defaults: tuple[tuple[str, str, str], ...]  # (qualname, parameter, default source)
    called: frozenset[str]  # names called as f(...) or x.f(...)
    evidence: frozenset[tuple[str, str]]  # ("name", f) with f imported from a module; ("attr", m.f)


@lru_cache(maxsize=1)
def _stdlib_files() -> tuple[tuple[str, str], ...]:
    """(relative path, absolute path) of every usable stdlib module file, sorted."""
    root = sysconfig.get_paths()["stdlib"]
    if not root or not Path(root).is_dir():
        raise CtxfoldError(f"the Python standard library source was not found at {root!r}")
    out: list[tuple[str, str]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("config-"))
        for name in sorted(files):
            if name.endswith(".py"):
                full = str(Path(folder) / name)
                out.append((os.path.relpath(full, root), full))
    if len(out) < 20:
        raise CtxfoldError(f"too few standard library files found under {root}")
    return tuple(sorted(out))


@cache
def _source(full: str) -> str | None:
    try:
        text = Path(full).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text if 0 < len(text) <= _MAX_FILE_CHARS else None


def _module_name(rel: str) -> str:
    parts = list(Path(rel[:-3]).parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _members(node: ast.ClassDef, methods_only: bool = False) -> frozenset[str]:
    """Names a class body defines (through if/try/with too), or only its methods."""
    names: set[str] = set()
    todo: list[ast.AST] = [*node.body]
    while todo:
        item = todo.pop()
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(item.name)
        elif methods_only:
            if isinstance(item, ast.If | ast.Try | ast.With):
                todo.extend(ast.iter_child_nodes(item))
        elif isinstance(item, ast.ClassDef):
            names.add(item.name)
        elif isinstance(item, ast.Assign | ast.AnnAssign):
            targets = item.targets if isinstance(item, ast.Assign) else [item.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(item, ast.If | ast.Try | ast.With):
            todo.extend(ast.iter_child_nodes(item))
    return frozenset(names)


def _defaults(
    qualname: str, fn: ast.FunctionDef | ast.AsyncFunctionDef
) -> list[tuple[str, str, str]]:
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    pairs = list(
        zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True)
    )
    pairs += [
        (a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None
    ]
    out = []
    for arg, default in pairs:
        text = ast.unparse(default)
        if len(text) <= 40 and "\n" not in text:
            out.append((qualname, arg.arg, text))
    return out


@cache
def _facts(rel: str, full: str) -> _Facts | None:
    source = _source(full)
    if source is None:
        return None
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    classes: list[tuple[str, frozenset[str], frozenset[str]]] = []
    functions: set[str] = set()
    defaults: list[tuple[str, str, str]] = []
    seen: dict[str, int] = defaultdict(int)
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes.append((node.name, _members(node, methods_only=True), _members(node)))
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    seen[f"{node.name}.{item.name}"] += 1
                    defaults += _defaults(f"{node.name}.{item.name}", item)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.add(node.name)
            seen[node.name] += 1
            defaults += _defaults(node.name, node)
    defined: set[str] = set()
    definers: list[frozenset[str]] = []
    called: set[str] = set()
    imported: set[str] = set()
    attr_calls: set[tuple[str, str]] = set()
    for sub in ast.walk(tree):
        if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(sub.name)
            if isinstance(sub, ast.ClassDef):
                definers.append(_members(sub))
        elif isinstance(sub, ast.Assign):
            defined.update(t.id for t in sub.targets if isinstance(t, ast.Name))
        elif isinstance(sub, ast.ImportFrom):
            imported.update(f"{sub.module}.{a.name}" for a in sub.names if sub.level == 0)
        elif isinstance(sub, ast.Call):
            if isinstance(sub.func, ast.Name):
                called.add(sub.func.id)
            elif isinstance(sub.func, ast.Attribute):
                called.add(sub.func.attr)
                if isinstance(sub.func.value, ast.Name):
                    attr_calls.add((sub.func.value.id, sub.func.attr))
    evidence = {("name", qual) for qual in imported if qual.rsplit(".", 1)[-1] in called}
    evidence |= {("attr", f"{mod}.{fn}") for mod, fn in attr_calls}
    return _Facts(
        classes=tuple(classes),
        all_definers=tuple(definers),
        functions=frozenset(functions),
        defined_anywhere=frozenset(defined),
        defaults=tuple(d for d in defaults if seen[d[0]] == 1),
        called=frozenset(called),
        evidence=frozenset(evidence),
    )


def _chunk(rel: str, src: str) -> str:
    return f"# ===== file: {rel} =====\n{src}"


@cache
def _chunk_tokens(rel: str, full: str) -> int:
    """Tokens of one file with its header: code varies too much for a chars-per-token rate."""
    src = _source(full)
    return 0 if src is None else count_tokens(_chunk(rel, src)) + 1


def _select(rng: random.Random, target: int) -> tuple[list[tuple[str, str, str]], int]:
    """(rel, full, source) of whole files in a seeded order totalling about ``target`` tokens,
    and their token count."""
    files = list(_stdlib_files())
    rng.shuffle(files)
    chosen: list[tuple[str, str, str]] = []
    size = 0
    for rel, full in files:
        src = _source(full)
        if src is None:
            continue
        add = _chunk_tokens(rel, full)
        if size + add <= target * 1.03:
            chosen.append((rel, full, src))
            size += add
        if size >= target * 0.98:
            break
    return chosen, size


_Q = tuple[str, str, list[str]]  # question, correct option text, distractors


def _ask_method(rng: random.Random, facts: dict[str, _Facts]) -> _Q | None:
    definers: dict[str, int] = defaultdict(int)
    class_names: dict[str, int] = defaultdict(int)
    for f in facts.values():
        for members in f.all_definers:
            for m in members:
                definers[m] += 1
        for cls, _, _ in f.classes:
            class_names[cls] += 1
    candidates = [
        (rel, cls, m)
        for rel, f in facts.items()
        for cls, methods, _ in f.classes
        if class_names[cls] == 1
        for m in sorted(methods)
        if definers[m] == 1 and not m.startswith("__") and len(m) > 3
    ]
    if not candidates:
        return None
    rel, cls, method = rng.choice(candidates)
    others = [
        f"{c} (in {r})"
        for r, f in facts.items()
        for c, _, members in f.classes
        if c != cls and class_names[c] == 1 and method not in members
    ]
    question = f"Which class defines the method `{method}`?"
    return question, f"{cls} (in {rel})", others


def _ask_default(rng: random.Random, facts: dict[str, _Facts]) -> _Q | None:
    candidates = [(rel, d) for rel, f in facts.items() for d in f.defaults]
    if not candidates:
        return None
    rel, (qual, param, default) = rng.choice(candidates)
    gold_key = _literal_key(default)
    others = sorted({d[2] for f in facts.values() for d in f.defaults})
    others = [o for o in others if _literal_key(o) != gold_key]
    question = (
        f"In the file {rel}, what is the default value of the parameter `{param}` of `{qual}`?"
    )
    return question, default, others


def _literal_key(text: str) -> str:
    try:
        return repr(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _unique_functions(facts: dict[str, _Facts]) -> list[tuple[str, str]]:
    defined: dict[str, int] = defaultdict(int)
    for f in facts.values():
        for name in f.defined_anywhere:
            defined[name] += 1
    return sorted(
        (rel, fn)
        for rel, f in facts.items()
        for fn in f.functions
        if defined[fn] == 1 and not fn.startswith("__") and len(fn) > 3
    )


def _ask_defines(rng: random.Random, facts: dict[str, _Facts]) -> _Q | None:
    candidates = _unique_functions(facts)
    if not candidates:
        return None
    rel, fn = rng.choice(candidates)
    others = [r for r, f in facts.items() if r != rel and fn not in f.defined_anywhere]
    return f"Which file defines the top-level function `{fn}`?", rel, others


def _ask_calls(rng: random.Random, facts: dict[str, _Facts]) -> _Q | None:
    candidates = []
    for rel, fn in _unique_functions(facts):
        module = _module_name(rel)
        callers = [r for r, f in facts.items() if r != rel and fn in f.called]
        if len(callers) != 1:
            continue
        ev = facts[callers[0]].evidence
        if ("name", f"{module}.{fn}") in ev or ("attr", f"{module.rsplit('.', 1)[-1]}.{fn}") in ev:
            candidates.append((rel, fn, callers[0]))
    if not candidates:
        return None
    rel, fn, caller = rng.choice(candidates)
    others = [r for r, f in facts.items() if r not in (rel, caller) and fn not in f.called]
    question = f"The function `{fn}` is defined in {rel}. Which other file calls it?"
    return question, caller, others


_ASK = {
    "method_class": _ask_method,
    "param_default": _ask_default,
    "defines_function": _ask_defines,
    "calls_function": _ask_calls,
}


def parse_choice(prediction: str, options: list[str]) -> str | None:
    """The option letter an answer picks: "B", "(B)", "answer: C", "**D.** ...", or an option's
    text; ``None`` when none can be told."""
    text = _strip_fences(prediction).replace("*", "").strip()
    patterns = (
        r"^\(?([A-D])\)?[.:)]?$",
        r"answer\s*(?:is|:)?\s*[:\-]?\s*(?:option\s*)?\(?([A-D])\b",
        r"^\(?([A-D])[).:]\s",
        r"\boption\s*\(?([A-D])\b",
        r"\(([A-D])\)",
    )
    for pattern in patterns:
        matches = re.findall(pattern, text, flags=re.IGNORECASE | re.MULTILINE)
        if matches:
            return str(matches[-1] if "answer" in pattern else matches[0]).upper()
    norm = _normalize(text)
    exact = [LETTERS[i] for i, o in enumerate(options) if _normalize(o) == norm]
    if exact:
        return exact[0]
    inside = [LETTERS[i] for i, o in enumerate(options) if _normalize(o) and _normalize(o) in norm]
    if len(inside) == 1:
        return inside[0]
    lone = re.findall(r"(?<![\w'])([B-D])(?![\w'])", text)
    return lone[0] if len(set(lone)) == 1 else None


class CodeQATask(_VariantTask):
    """Multiple-choice questions over stdlib source; ``variant`` fixes the question kind."""

    name: str = "codeqa"
    default_lengths: tuple[int, ...] = (100_000, 400_000, 1_000_000)
    variants = VARIANTS

    def generate(self, *, n: int, length: int, seed: int) -> list[Instance]:
        """``n`` instances of about ``length`` tokens each."""
        _check_args(self.name, n, length)
        return [self._one(i, length, seed) for i in range(n)]

    def _one(self, index: int, length: int, seed: int) -> Instance:
        first = VARIANTS.index(_pick_variant(self.name, VARIANTS, self.variant, index))
        order = [VARIANTS[(first + k) % len(VARIANTS)] for k in range(len(VARIANTS))]
        asked: _Q | None = None
        for attempt in range(8):  # a small context may offer no question: draw other files
            rng = _rng(self.name, length, seed, index, salt=str(attempt))
            files, tokens = _select(rng, length)
            facts = {rel: f for rel, full, _ in files if (f := _facts(rel, full)) is not None}
            for variant in order:
                asked = _ASK[variant](rng, facts)
                if asked is not None and len(set(asked[2])) >= 3:
                    break
                asked = None
            if asked is not None:
                break
        if asked is None:
            raise CtxfoldError(f"codeqa: no question could be made at length {length}; use more")
        question, answer, pool = asked
        options = [answer, *rng.sample(sorted(set(pool)), 3)]
        rng.shuffle(options)
        letter = LETTERS[options.index(answer)]
        listing = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(options))
        context = "\n".join(_chunk(rel, src) for rel, _, src in files)
        return Instance(
            task=self.name,
            id=f"{self.name}-{length}-{seed}-{index}",
            question=(
                f"The context is Python standard library source files, each introduced by a "
                f"'# ===== file: <path> =====' line.\n\n{question}\n{listing}\n\n"
                "Answer with the letter of the correct option."
            ),
            context=context,
            gold=letter,
            meta=_meta(
                context=context,
                cpt=len(context) / max(1, tokens),
                seed=seed,
                variant=variant,
                index=index,
                options=options,
                answer=answer,
                files=len(files),
                attempt=attempt,
            ),
        )

    def score(self, instance: Instance, prediction: str) -> float:
        """1.0 if the answer picks the right option (by letter or by the option's text)."""
        options = [str(o) for o in instance.meta.get("options", [])]
        return 1.0 if parse_choice(prediction, options) == instance.gold else 0.0
