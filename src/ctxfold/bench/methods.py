"""The methods a bench compares on the same instances.

- ``base``: the whole input in one prompt, cut to the model's window (marked ``truncated``, the
  paper's "*").
- ``summary``: a summarisation agent that reads the input chunk by chunk, keeping running notes.
- ``rlm``: a Recursive Language Model.
- ``rlm_nosub``: an RLM without sub-calls (``Budget(depth=0)``): code alone.
- ``rlm_tools``, ``agent_bm25``, ``codeact_bm25``: search tools over the input (see
  :mod:`.tool_methods`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ctxfold.bench._types import Instance
from ctxfold.budget import Budget
from ctxfold.errors import ModelError
from ctxfold.models import Message, Model, TokenUsage, count_tokens
from ctxfold.result import Result
from ctxfold.rlm import RLM
from ctxfold.trace import Feedback, RootResponse, Trace

_CONTEXT_REFUSAL = re.compile(r"context (size|length|window)|too many tokens|too long", re.I)
_BASE_ASK = "Answer the question about the text above.\nQuestion: "
_ANSWER_RESERVE = 600  # tokens kept free for the question and the reply
_DEFAULT_WINDOW = 32_000


@dataclass(slots=True)
class MethodResult:
    """What one method produced on one instance (token counts from the API, or estimated)."""

    answer: str
    root_input_tokens: int = 0
    root_output_tokens: int = 0
    sub_input_tokens: int = 0
    sub_output_tokens: int = 0
    sub_calls: int = 0
    cost_usd: float = 0.0
    iterations: int = 1
    ready: bool | None = None
    truncated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # The run's trace (RLM methods), saved beside the results; not part of the row.
    trace: Trace | None = field(default=None, repr=False, compare=False)

    def row(self) -> dict[str, Any]:
        """The result's fields for a results row (all but ``trace``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "trace"}


Method = Callable[[Instance, Model, Model, int], MethodResult]
"""``method(instance, root_model, sub_model, max_iterations) -> MethodResult``."""


def context_text(context: Any) -> str:
    """The input as one text (JSON for lists and dicts), for methods that paste it in prompts."""
    return context if isinstance(context, str) else json.dumps(context, ensure_ascii=False)


def _window(model: Model) -> int:
    return model.context_window or _DEFAULT_WINDOW


def _fit(text: str, tokens: int) -> tuple[str, bool]:
    """Cut ``text`` to about ``tokens`` tokens (head kept); the flag says whether it was cut."""
    if len(text) <= tokens:  # at least one character per token: it fits
        return text, False
    sample = text[:40_000]
    chars_per_token = len(sample) / max(1, count_tokens(sample))
    limit = int(tokens * chars_per_token * 0.92)
    return (text[:limit], True) if len(text) > limit else (text, False)


def _ask(model: Model, prompt: str, usage: list[TokenUsage]) -> str:
    messages: list[Message] = [{"role": "user", "content": prompt}]
    completion = model.complete(messages)
    usage.append(completion.usage)
    return completion.text


def base(instance: Instance, root: Model, sub: Model, max_iterations: int) -> MethodResult:
    """One call with the input pasted in, cut to the root model's window.

    The cut counts tokens with ``cl100k_base``; a model whose own tokenizer counts more refuses
    the prompt, and the text is cut by another 15 % until it fits (at most three times).
    """
    budget = _window(root) - _ANSWER_RESERVE - count_tokens(instance.question)
    text, truncated = _fit(context_text(instance.context), budget)
    usage: list[TokenUsage] = []
    for attempt in range(4):
        prompt = f"{text}\n\n{_BASE_ASK}{instance.question}"
        try:
            answer = _ask(root, prompt, usage)
            break
        except ModelError as exc:
            if attempt == 3 or not _CONTEXT_REFUSAL.search(str(exc)):
                raise
            text, truncated = text[: int(len(text) * 0.85)], True
    return MethodResult(
        answer=answer,
        root_input_tokens=usage[0].input_tokens,
        root_output_tokens=usage[0].output_tokens,
        cost_usd=usage[0].cost_usd or 0.0,
        truncated=truncated,
    )


def summary(instance: Instance, root: Model, sub: Model, max_iterations: int) -> MethodResult:
    """Read the input chunk by chunk with the sub-model, keeping notes; answer from the notes."""
    text = context_text(instance.context)
    chunk_tokens = max(1000, _window(sub) // 2 - _ANSWER_RESERVE)
    chunks: list[str] = []
    rest = text
    while rest:
        piece, _ = _fit(rest, chunk_tokens)
        piece = piece or rest[:1000]
        chunks.append(piece)
        rest = rest[len(piece) :]
    notes = "(none yet)"
    sub_usage: list[TokenUsage] = []
    for i, chunk in enumerate(chunks, 1):
        notes = _ask(
            sub,
            f"Question: {instance.question}\n\nYour notes so far:\n{notes}\n\n"
            f"Part {i} of {len(chunks)} of a long document:\n{chunk}\n\n"
            "Rewrite your notes: keep everything from the old notes and add every fact from this "
            "part that helps answer the question. Reply with the notes only, briefly.",
            sub_usage,
        )
    root_usage: list[TokenUsage] = []
    answer = _ask(
        root,
        f"Notes taken while reading a long document:\n{notes}\n\n"
        f"Using the notes, answer the question.\nQuestion: {instance.question}",
        root_usage,
    )
    return MethodResult(
        answer=answer,
        root_input_tokens=root_usage[0].input_tokens,
        root_output_tokens=root_usage[0].output_tokens,
        sub_input_tokens=sum(u.input_tokens for u in sub_usage),
        sub_output_tokens=sum(u.output_tokens for u in sub_usage),
        sub_calls=len(sub_usage),
        cost_usd=sum(u.cost_usd or 0.0 for u in (*root_usage, *sub_usage)),
        extra={"chunks": len(chunks)},
    )


def rlm_result(result: Result) -> MethodResult:
    """A bench row's numbers from an RLM run's result, with a short transcript of the root turns."""
    u = result.usage
    return MethodResult(
        answer=result.answer,
        root_input_tokens=u.root_input_tokens,
        root_output_tokens=u.root_output_tokens,
        sub_input_tokens=u.sub_input_tokens,
        sub_output_tokens=u.sub_output_tokens,
        sub_calls=u.sub_calls,
        cost_usd=u.cost_usd,
        iterations=result.iterations,
        ready=result.ready,
        extra={"stop_reason": result.stop_reason, "transcript": transcript(result.trace)},
        trace=result.trace,
    )


def transcript(trace: Trace, *, reply_chars: int = 700, feedback_chars: int = 400) -> list[str]:
    """The top-level root turns of a run, each cut short: what to read when a row scored 0."""
    lines: list[str] = []
    for event in trace:
        if isinstance(event, RootResponse) and event.depth == 0:
            lines.append(f"[{event.turn}] model: {_cut(event.text, reply_chars)}")
        elif isinstance(event, Feedback) and event.depth == 0:
            lines.append(f"[{event.turn}] ctxfold: {_cut(event.content, feedback_chars)}")
    return lines


def _cut(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else f"{text[: limit - 20]} ...[{len(text):,} chars]"


def _rlm(depth: int, doc: str) -> Method:
    def run(instance: Instance, root: Model, sub: Model, max_iterations: int) -> MethodResult:
        rlm = RLM(model=root, sub_model=sub, budget=Budget(iterations=max_iterations, depth=depth))
        return rlm_result(rlm.run(instance.question, instance.context))

    run.__doc__ = doc
    return run


def _with_tools(name: str, doc: str) -> Method:
    """A method from :mod:`ctxfold.bench.tool_methods` (imported when first run)."""

    def run(instance: Instance, root: Model, sub: Model, max_iterations: int) -> MethodResult:
        from ctxfold.bench import tool_methods

        method: Method = getattr(tool_methods, name)
        return method(instance, root, sub, max_iterations)

    run.__doc__ = doc
    return run


METHODS: dict[str, Method] = {
    "base": base,
    "summary": summary,
    "rlm": _rlm(1, "An RLM: the input in the REPL, sub-LLM calls from code."),
    "rlm_nosub": _rlm(0, "An RLM without sub-LLM calls (Budget(depth=0)): code alone."),
    "rlm_tools": _with_tools("rlm_tools", "An RLM whose sub-LLMs can search/read/grep the input."),
    "agent_bm25": _with_tools("agent_bm25", "The root model with search/read/grep as chat tools."),
    "codeact_bm25": _with_tools(
        "codeact_bm25", "CodeAct + BM25: the root's code calls search/read/grep, no sub-LLMs."
    ),
}


def timed(
    method: Method, instance: Instance, root: Model, sub: Model, iters: int
) -> tuple[MethodResult, float]:
    """Run a method and measure its wall time."""
    started = time.monotonic()
    result = method(instance, root, sub, iters)
    return result, time.monotonic() - started
