"""Training examples from traces: each kept run's root conversation as the model saw it.

An example is ``{"messages": [...]}`` (the chat format OpenAI fine-tuning and TRL read): the
root's first messages (system prompt, demonstration, task message, recorded in the trace as a
``root_prompt`` event), then each reply and the feedback that followed it, ending with the
root's last reply. Runs come from rollout or bench folders (``results.jsonl`` rows, with their
scores, naming their traces) or from trace files a user recorded with ``--trace``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctxfold.bench import load_rows
from ctxfold.errors import CtxfoldError
from ctxfold.trace import (
    Event,
    Feedback,
    RootPrompt,
    RootResponse,
    RunEnd,
    RunStart,
    SubcallEnd,
    SubcallStart,
    Trace,
)

__all__ = [
    "TURNS",
    "ExportReport",
    "RecordedRun",
    "export_examples",
    "recorded_runs",
    "root_conversation",
    "subcall_conversations",
]

Chat = list[dict[str, Any]]
"""A chat example's messages: ``role``, ``content`` and, on an assistant message that is not
to be trained on, ``"weight": 0``."""

TURNS = ("root", "sub", "all")
"""Which conversations become examples: the root model's, the sub-calls', or both."""


@dataclass(frozen=True, slots=True)
class RecordedRun:
    """One run read back from a trace: its conversation and how it ended.

    ``instance`` groups the samples of one task instance (the train/validation split never
    divides it); ``score`` is the bench scorer's, ``None`` for a trace without one;
    ``subcalls`` are its answered sub-calls' conversations (when the trace recorded them).
    """

    source: str
    instance: str
    messages: Chat
    ready: bool
    score: float | None
    subcalls: list[Chat] = field(default_factory=list)


@dataclass
class ExportReport:
    """What an export read, kept and wrote."""

    runs: int = 0
    kept: int = 0
    root_examples: int = 0
    sub_examples: int = 0
    below_score: int = 0
    not_ready: int = 0
    no_conversation: int = 0
    duplicates: int = 0
    train_examples: int = 0
    val_examples: int = 0
    train_instances: int = 0
    val_instances: int = 0
    mean_turns: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return (
            f"read {self.runs} runs; kept {self.kept} (dropped: {self.below_score} below the "
            f"score, {self.not_ready} not ready, {self.no_conversation} without the "
            f"conversations asked for)\n"
            f"examples: {self.root_examples} root, {self.sub_examples} sub-call "
            f"({self.duplicates} duplicates dropped)\n"
            f"train: {self.train_examples} examples from {self.train_instances} instances -> "
            f"{self.files.get('train', '-')}\n"
            f"validation: {self.val_examples} examples from {self.val_instances} instances -> "
            f"{self.files.get('val', '-')}\n"
            f"mean assistant turns per example: {self.mean_turns:.1f}"
        )


def root_conversation(events: Sequence[Event]) -> Chat:
    """The top root model's whole conversation in ``events`` (one run), ending with its last
    reply; empty when the trace holds no ``root_prompt`` (an older trace) or no reply. The
    prompt's own assistant turns (a demonstration) carry ``"weight": 0``, as in OpenAI's
    fine-tuning format: they are context, not the model's work, and are not trained on."""
    messages: Chat = []
    for event in events:
        if event.depth != 0:
            continue
        if isinstance(event, RootPrompt):
            messages = [
                {"role": m["role"], "content": m["content"]}
                | ({"weight": 0} if m["role"] == "assistant" else {})
                for m in event.messages
            ]
        elif messages and isinstance(event, RootResponse):
            messages.append({"role": "assistant", "content": event.text})
        elif messages and isinstance(event, Feedback):
            messages.append({"role": "user", "content": event.content})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    return messages


def subcall_conversations(events: Sequence[Event]) -> list[Chat]:
    """Every answered sub-call in ``events`` whose messages the trace recorded in full (see
    :func:`ctxfold.trace.subcall_messages`), as its messages and the reply."""
    sent = {e.call_id: e.messages for e in events if isinstance(e, SubcallStart) and e.messages}
    return [
        [*sent[e.call_id], {"role": "assistant", "content": e.response}]
        for e in events
        if isinstance(e, SubcallEnd) and e.error is None and e.response and e.call_id in sent
    ]


def _load(path: Path) -> Trace:
    try:
        return Trace.load(path)
    except OSError as exc:
        raise CtxfoldError(f"cannot read {path}: {exc.strerror}") from None


def _from_trace(path: Path, score: float | None, instance: str | None) -> Iterator[RecordedRun]:
    for events in _load(path).runs():
        start = next((e for e in events if isinstance(e, RunStart)), None)
        end = next((e for e in events if isinstance(e, RunEnd)), None)
        key = instance
        if key is None:  # a user's trace: a run is its own instance (its question and inputs)
            shown = json.dumps([start.question, start.contexts] if start else [str(path)])
            key = hashlib.sha256(shown.encode()).hexdigest()[:16]
        yield RecordedRun(
            source=str(path),
            instance=key,
            messages=root_conversation(events),
            ready=bool(end and end.ready),
            score=score,
            subcalls=subcall_conversations(events),
        )


def recorded_runs(source: Path) -> Iterator[RecordedRun]:
    """The runs of ``source``: a rollout/bench folder (its ``results.jsonl`` rows that name a
    trace, with their scores), another folder (its trace files), or one trace file."""
    if not source.exists():
        raise CtxfoldError(f"no such file or folder: {source}")
    if source.is_file():
        yield from _from_trace(source, None, None)
        return
    results = source / "results.jsonl"
    if not results.is_file():
        for path in sorted(source.rglob("*.jsonl")):
            yield from _from_trace(path, None, None)
        return
    rows = [
        row
        for row in load_rows(results)
        if row.get("trace") and isinstance(row.get("score"), int | float)
    ]
    if not rows:
        raise CtxfoldError(
            f"{source} has no scored runs with a trace (run `ctxfold train rollouts` into it)"
        )
    for row in rows:
        instance = str(row.get("instance", "")).split("~s")[0]
        yield from _from_trace(source / row["trace"], float(row["score"]), instance)


def _is_validation(instance: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{instance}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def export_examples(
    sources: Sequence[Path],
    out: Path,
    *,
    min_score: float | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    turns: str = "root",
) -> ExportReport:
    """Write the kept runs' conversations as chat examples to ``out`` (training) and
    ``OUT.val.jsonl`` (validation: a ``val_fraction`` of the instances, never a part of one).

    A run is kept when its score is at least ``min_score`` (scored runs), or when it ended
    ready (runs without a score, or all runs when ``min_score`` is ``None``). ``turns``: its
    root conversation (``"root"``), each of its answered sub-calls (``"sub"``: the traces of
    ``ctxfold train rollouts`` record them in full), or both (``"all"``). Conversations seen
    before are dropped. Raises :class:`CtxfoldError` (one line) on bad input.
    """
    if not 0 <= val_fraction < 1:
        raise CtxfoldError("--val-fraction must be in [0, 1)")
    if turns not in TURNS:
        raise CtxfoldError(f"--turns is one of {', '.join(TURNS)}")
    report = ExportReport()
    seen: set[str] = set()
    split: dict[str, list[Chat]] = {"train": [], "val": []}
    instances: dict[str, set[str]] = {"train": set(), "val": set()}
    for source in sources:
        for run in recorded_runs(source):
            report.runs += 1
            if not _kept(run, min_score, report):
                continue
            examples = _examples(run, turns)
            if not examples:
                report.no_conversation += 1
                continue
            part = "val" if _is_validation(run.instance, val_fraction, seed) else "train"
            new = 0
            for kind, messages in examples:
                key = hashlib.sha256(json.dumps(messages).encode()).hexdigest()
                if key in seen:
                    report.duplicates += 1
                    continue
                seen.add(key)
                split[part].append(messages)
                new += 1
                if kind == "root":
                    report.root_examples += 1
                else:
                    report.sub_examples += 1
            if new:  # a run is kept when it gave at least one example not seen before
                report.kept += 1
                instances[part].add(run.instance)
    if not report.kept:
        raise CtxfoldError(f"no run was kept of the {report.runs} read: {_why(report)}")
    _write(split, instances, out, report)
    return report


def _kept(run: RecordedRun, min_score: float | None, report: ExportReport) -> bool:
    """Whether ``run`` passes the filter (counting it in ``report`` when it does not)."""
    if run.score is not None and min_score is not None:
        if run.score < min_score:
            report.below_score += 1
            return False
    elif not run.ready:
        report.not_ready += 1
        return False
    return True


def _examples(run: RecordedRun, turns: str) -> list[tuple[str, Chat]]:
    """The conversations of ``run`` that ``turns`` asks for, each with its kind."""
    found: list[tuple[str, Chat]] = []
    if turns in ("root", "all") and run.messages:
        found.append(("root", run.messages))
    if turns in ("sub", "all"):
        found += [("sub", messages) for messages in run.subcalls]
    return found


def _write(
    split: dict[str, list[Chat]],
    instances: dict[str, set[str]],
    out: Path,
    report: ExportReport,
) -> None:
    """Write the train and validation examples and the report, counting them in ``report``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for part, path in (("train", out), ("val", out.with_name(f"{out.stem}.val.jsonl"))):
        if part == "val" and not split["val"]:
            continue
        with path.open("w", encoding="utf-8") as fh:
            for messages in split[part]:
                fh.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
        report.files[part] = str(path)
    report.train_examples, report.val_examples = len(split["train"]), len(split["val"])
    report.train_instances, report.val_instances = len(instances["train"]), len(instances["val"])
    kept = split["train"] + split["val"]
    report.mean_turns = sum(
        sum(m["role"] == "assistant" and m.get("weight", 1) for m in messages) for messages in kept
    ) / max(1, len(kept))
    report_path = out.with_name(f"{out.stem}.report.json")
    report.files["report"] = str(report_path)
    report_path.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")


def _why(report: ExportReport) -> str:
    return (
        f"{report.below_score} below the score, {report.not_ready} not ready, "
        f"{report.no_conversation} without the conversations asked for (a root conversation "
        f"needs root_prompt events, a sub-call's its messages, which `ctxfold train rollouts` "
        f"records)"
    )
