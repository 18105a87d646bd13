"""Run methods over task instances and write one JSON line per (instance, method).

Results are appended as they finish, so an interrupted bench keeps what it did, and a rerun with
the same output file skips the pairs already done.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ctxfold.bench._types import Instance, Task
from ctxfold.bench.methods import METHODS, timed
from ctxfold.bench.tasks import get_task
from ctxfold.cache import CachedModel, ResponseCache
from ctxfold.errors import CtxfoldError
from ctxfold.models import Model, WithOptions, resolve_model
from ctxfold.trace import subcall_messages as record_subcalls


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """What to run. Models are spec strings so that remote executors can rebuild them."""

    task: str
    methods: tuple[str, ...]
    lengths: tuple[int, ...]
    n: int = 3
    seed: int = 0
    model: str = "local"
    sub_model: str | None = None
    max_iterations: int = 12
    # Sampling (rollouts): each instance ``samples`` times, the models at ``temperature``.
    samples: int = 1
    temperature: float | None = None
    # A response cache (a path; "" for the default file), or None for none.
    cache: str | None = None
    # Saved traces record each sub-call's messages in full (training exports of sub-calls).
    subcall_messages: bool = False

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise CtxfoldError(
                f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}"
            )
        if self.n < 1 or any(length < 1 for length in self.lengths):
            raise CtxfoldError("--n and --lengths must be positive")
        if self.samples < 1:
            raise CtxfoldError("--samples must be at least 1")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise CtxfoldError("--temperature must be between 0 and 2")


def instances(spec: BenchSpec) -> Iterator[Instance]:
    """Every instance of the spec, lengths in order; seeds are ``seed``, ``seed + 1``, ..."""
    task: Task = get_task(spec.task)
    for length in spec.lengths or task.default_lengths:
        for instance in task.generate(n=spec.n, length=length, seed=spec.seed):
            instance.meta.setdefault("requested_length", length)
            if spec.samples == 1 and spec.temperature is None:
                yield instance
                continue
            for sample in range(spec.samples):  # INSTANCE~sK: one sample of the instance
                meta = instance.meta | {"sample": sample, "temperature": spec.temperature}
                yield replace(instance, id=f"{instance.id}~s{sample}", meta=meta)


def _sampling(instance: Instance, root: Model, sub: Model) -> tuple[Model, Model]:
    """The models of one sample: at its temperature, seeded by its number."""
    temperature = instance.meta.get("temperature")
    if temperature is None:
        return root, sub
    options = {"temperature": temperature, "seed": int(instance.meta.get("sample", 0))}
    sampled_root = WithOptions(root, **options)
    return sampled_root, sampled_root if sub is root else WithOptions(sub, **options)


def _row_head(instance: Instance, method: str, model: str, sub_model: str) -> dict[str, Any]:
    return {
        "task": instance.task,
        "instance": instance.id,
        "method": method,
        "requested_length": instance.meta.get("requested_length"),
        "length_tokens": instance.meta.get("length_tokens"),
        "length_chars": instance.meta.get("length_chars"),
        "variant": instance.meta.get("variant"),
        "seed": instance.meta.get("seed"),
        "sample": instance.meta.get("sample"),
        "model": model,
        "sub_model": sub_model,
        "gold": instance.gold
        if isinstance(instance.gold, str | int | float)
        else repr(instance.gold),
    }


def error_row(
    instance: Instance, method: str, model: str, sub_model: str, error: str, detail: str
) -> dict[str, Any]:
    """The row of a pair that failed: score 0, ``error`` (one line) and ``detail`` (a traceback)."""
    row = _row_head(instance, method, model, sub_model)
    row.update(score=0.0, error=error, wall_s=None, traceback=detail)
    return row


def run_one(
    instance: Instance,
    method: str,
    root: Model,
    sub: Model,
    iters: int,
    traces: Path | None = None,
    *,
    subcall_messages: bool = False,
) -> dict[str, Any]:
    """One (instance, method) pair as a result row. Failures become rows with an ``error``.

    With ``traces`` (a folder), an RLM method's trace is saved there and the row's ``trace``
    names the file (relative to the folder's parent, where the results file is); with
    ``subcall_messages`` it records each sub-call's messages in full.
    """
    task = get_task(instance.task)
    try:
        sampled_root, sampled_sub = _sampling(instance, root, sub)
        with record_subcalls(subcall_messages):
            result, seconds = timed(METHODS[method], instance, sampled_root, sampled_sub, iters)
    except Exception as exc:  # a failing instance is a data point, not the end of the bench
        error = f"{type(exc).__name__}: {exc}"
        return error_row(
            instance, method, root.name, sub.name, error, traceback.format_exc(limit=3)
        )
    row = _row_head(instance, method, root.name, sub.name)
    row.update(result.row())
    if traces is not None and result.trace is not None:
        traces.mkdir(parents=True, exist_ok=True)
        path = traces / f"{_file_name(instance.id)}.{_file_name(method)}.jsonl"
        result.trace.save(path)
        row["trace"] = f"{traces.name}/{path.name}"
    row["wall_s"] = round(seconds, 3)
    row["score"] = task.score(instance, result.answer)
    row["error"] = None
    return row


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _done(path: Path) -> set[tuple[str, str]]:
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        done.add((row["instance"], row["method"]))
    return done


def run_bench(
    spec: BenchSpec,
    out: Path,
    *,
    root: Model | None = None,
    sub: Model | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    ray_cpus: int | None = None,
) -> list[dict[str, Any]]:
    """Run ``spec`` and append rows to ``out`` (JSONL). Returns the rows made by this call.

    ``executor="ray"`` runs the pairs as Ray tasks, on a local Ray started here (``ray_cpus``
    tasks at once, default ``min(4, cores)``) or on the cluster at ``ray_address``; its tasks
    build their models from the spec's strings, so ``root`` and ``sub`` objects are refused.
    """
    if executor not in ("local", "ray"):
        raise CtxfoldError(f"unknown executor {executor!r}: use local or ray")
    if executor == "ray" and (root is not None or sub is not None):
        raise CtxfoldError("the ray executor builds models from spec strings: give none as objects")
    out.parent.mkdir(parents=True, exist_ok=True)
    traces = out.parent / "traces"  # each RLM run's trace, linked from its row
    done = _done(out)
    todo = [
        (inst, method)
        for inst in instances(spec)
        for method in spec.methods
        if (inst.id, method) not in done
    ]
    if on_start is not None:
        on_start(len(todo))
    rows_iter: Generator[dict[str, Any]]
    if executor == "ray":
        from ctxfold.bench._ray import run_on_ray

        rows_iter = run_on_ray(spec, todo, ray_address, num_cpus=ray_cpus, traces=traces)
    else:
        rows_iter = _run_local(spec, todo, root, sub, traces)
    rows = []
    # closing(): an interrupt between two rows still stops the executor (models, Ray) at once.
    with closing(rows_iter), out.open("a", encoding="utf-8") as fh:
        for row in rows_iter:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def _run_local(
    spec: BenchSpec,
    todo: Sequence[tuple[Instance, str]],
    root: Model | None,
    sub: Model | None,
    traces: Path | None = None,
) -> Generator[dict[str, Any]]:
    owned = []
    if root is None:
        root = resolve_model(spec.model)
        owned.append(root)
    if sub is None:
        sub = root if spec.sub_model in (None, spec.model) else resolve_model(spec.sub_model)
        if sub is not root:
            owned.append(sub)
    root, sub = cached_models(spec.cache, root, sub)
    try:
        for instance, method in todo:
            yield run_one(
                instance,
                method,
                root,
                sub,
                spec.max_iterations,
                traces,
                subcall_messages=spec.subcall_messages,
            )
    finally:
        for model in owned:
            model.close()


def cached_models(cache_path: str | None, root: Model, sub: Model) -> tuple[Model, Model]:
    """The models behind a response cache (``cache_path``; ``""``: the default file), or as
    they are for ``None``."""
    if cache_path is None:
        return root, sub
    cache = ResponseCache(cache_path or None)
    cached_root = CachedModel(root, cache)
    return cached_root, cached_root if sub is root else CachedModel(sub, cache)


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a results file: one JSON object per line. A line that is not one (the torn
    last line a killed bench leaves) is skipped, and bytes that are not UTF-8 are replaced, so
    every reader (reports, the viewer, the training export) sees the same rows."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
