"""The broker answers sub-call requests coming from code in the sandbox.

It owns parallelism (a bounded thread pool per engine), budget checks, accounting and tracing of
sub-calls, and recursion into child RLM engines. A failing item yields an error string in its own
slot; nothing here raises into the sandbox.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ctxfold.budget import BudgetSpent
from ctxfold.choices import (
    choice_max_tokens,
    choice_prompt,
    match_choice,
    pack_max_tokens,
    pack_prompt,
    packable,
    read_pack,
    retry_instruction,
)
from ctxfold.engine import RunShared
from ctxfold.models import CHARS_PER_TOKEN, Completion, Message, Model
from ctxfold.sandbox import SubcallItem, SubcallRequest
from ctxfold.tools import ToolOutcome, run_tool_loop
from ctxfold.trace import SubcallEnd, SubcallStart, ToolCall

# (prompt, context, depth of the child) -> the child run's answer
ChildRunner = Callable[[str, Any, int], str]

_PREVIEW = 200
_PACK_CHARS = 4000  # at most this many characters of items in one packed sub-call


def error_text(kind: str, message: str) -> str:
    """The string a failed sub-call returns in its slot (the root model sees it)."""
    return f"[error: {kind}: {message}]"


def request_key(kind: str, item: SubcallItem) -> str:
    """A stable hash of one sub-call request, so a resumed run can answer it from its trace."""
    context = None if item.context is None else json.dumps(item.context, sort_keys=True)
    fields: list[Any] = [kind, item.prompt, item.system, item.model, context]
    if item.choices is not None:  # only then, so keys of runs without choices stay as they were
        fields.append(list(item.choices))
    if item.choice_notes is not None:
        fields.append(list(item.choice_notes))
    payload = json.dumps(fields)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Broker:
    """Serves the sub-calls of the engine at ``depth`` (its calls are made at ``depth + 1``)."""

    def __init__(self, shared: RunShared, depth: int, run_child: ChildRunner) -> None:
        self._shared = shared
        self._depth = depth
        self._run_child = run_child
        self._tool_calls = itertools.count(1)  # root-visible tool calls (CodeAct mode)
        self._pool = ThreadPoolExecutor(
            max_workers=shared.options.concurrency, thread_name_prefix=f"ctxfold-sub{depth}"
        )

    def handle(self, request: SubcallRequest) -> list[str] | dict[str, Any]:
        """Answer one request from the sandbox. Never raises."""
        if request.kind == "budget":
            return self._shared.meter.remaining()
        if request.kind == "tool":
            return [self._guarded(self._tool, item) for item in request.items]
        extension = self._shared.options.extension
        if extension is not None and extension.refuses_subcalls:
            name = "llm_query" if request.kind == "llm" else "rlm_query"
            return [error_text(name, extension.refuses_subcalls)] * len(request.items)
        # What the budget cannot allow is refused now, before anything is queued.
        allowed = self._shared.meter.calls_allowed(len(request.items))
        served, surplus = list(request.items[:allowed]), len(request.items) - allowed
        refused = [self._over_budget(request.kind)] * surplus
        groups = [[i] for i in range(len(served))]
        if request.kind == "llm":
            groups = self._groups(served)
        answers = [""] * len(served)

        def serve(group: list[int]) -> None:
            texts = self._serve(request.kind, [served[i] for i in group])
            for i, text in zip(group, texts, strict=True):
                answers[i] = text

        if len(groups) <= 1:
            for group in groups:
                serve(group)
        else:
            list(self._pool.map(serve, groups))
        return [*answers, *refused]

    def _serve(self, kind: str, items: list[SubcallItem]) -> list[str]:
        """The answers to ``items``: one child run, one sub-call, or one pack. Never raises."""
        if len(items) == 1:
            return [self._guarded(self._rlm if kind == "rlm" else self._llm, items[0])]
        try:
            return self._llm_pack(items)
        except Exception as exc:  # a bug here must not sink the batch
            return [error_text("sub-call", f"{type(exc).__name__}: {exc}")] * len(items)

    def _groups(self, items: list[SubcallItem]) -> list[list[int]]:
        """Indexes of ``items`` in the sub-calls that answer them: small items that share
        model, system and choices go in packs of up to ``choice_pack`` (see :func:`_packs`);
        every other item is asked alone."""
        size = self._shared.options.choice_pack
        alike: dict[tuple[Any, ...], list[int]] = {}
        groups: list[list[int]] = []
        for i, item in enumerate(items):
            if size > 1 and item.choices and packable(item.prompt) and not self._shared.tools:
                key = (item.model, item.system, item.choices, item.choice_notes)
                alike.setdefault(key, []).append(i)
            else:
                groups.append([i])
        for members in alike.values():
            groups.extend(_packs(members, [len(items[i].prompt) for i in members], size))
        return groups

    def _over_budget(self, kind: str, limit: str | None = None) -> str:
        spent = limit or self._shared.meter.exhausted() or "sub_calls"
        name = "llm_query" if kind == "llm" else "rlm_query"
        return error_text(name, f"budget exhausted ({spent}); no more sub-calls")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _guarded(self, one: Callable[[SubcallItem], str], item: SubcallItem) -> str:
        try:
            return one(item)
        except Exception as exc:  # a bug in a child run must not sink the batch
            return error_text("sub-call", f"{type(exc).__name__}: {exc}")

    def _pick_model(self, name: str | None) -> Model | str:
        if name is None:
            return self._shared.sub_model
        model = self._shared.models.get(name)
        if model is None:
            known = ", ".join(sorted(self._shared.models))
            return f"unknown model {name!r}; this run allows: {known}"
        return model

    def _admit(self, item: SubcallItem, *, reserve: bool = True) -> Model | str:
        """The model that answers ``item``, or why it cannot be asked (an error text). With
        ``reserve`` the sub-call is counted against the budget here."""
        shared = self._shared
        model = self._pick_model(item.model)
        if isinstance(model, str):
            return error_text("llm_query", model)
        if shared.cancelled.is_set():
            return error_text("llm_query", "the run was cancelled")
        if shared.budget.depth == 0:
            return error_text("llm_query", "sub-calls are disabled in this run (Budget.depth=0)")
        if model.context_window and len(item.prompt) // CHARS_PER_TOKEN > model.context_window:
            return error_text(
                "llm_query",
                f"prompt of about {len(item.prompt) // CHARS_PER_TOKEN:,} tokens exceeds the "
                f"sub-model's window of {model.context_window:,} tokens; send smaller chunks",
            )
        if reserve and not shared.meter.reserve_sub_call():
            return self._over_budget("llm")
        return model

    def _llm(self, item: SubcallItem, key: str | None = None, *, reserved: bool = False) -> str:
        depth = self._depth + 1
        model = self._admit(item, reserve=not reserved)
        if isinstance(model, str):
            return model
        prompt = item.prompt
        if item.choices:
            prompt = choice_prompt(prompt, item.choices, item.choice_notes)
        messages = _messages(item.system, prompt)
        call_id, started = self._start(
            "llm", model.name, item, key or request_key("llm", item), messages
        )
        try:
            completion = self._complete(model, messages, call_id, depth, item.choices)
            text, error = completion.text, None
            if item.choices:
                completion, text, error = self._chosen(model, messages, completion, item.choices)
        except Exception as exc:
            traced, answer = self._failed(exc)
            self._end(call_id, "llm", model.name, started, "", traced)
            return answer
        usage = completion.usage
        self._end(
            call_id,
            "llm",
            model.name,
            started,
            text,
            error,
            usage.input_tokens,
            usage.output_tokens,
            cache_hit=usage.cache_hit,
        )
        return text if error is None else error_text("llm_query", error)

    def _llm_pack(self, items: list[SubcallItem]) -> list[str]:
        """Answers for several small items with one model, system and choices, asked in one
        sub-call (:func:`ctxfold.choices.pack_prompt`). Each item is counted against the budget
        and traced as its own sub-call; an item the reply gives no choice for is asked alone."""
        model = self._admit(items[0], reserve=False)
        if isinstance(model, str):
            return [model] * len(items)
        meter = self._shared.meter
        answers = [None if meter.reserve_sub_call() else self._over_budget("llm") for _ in items]
        asked = [i for i, text in enumerate(answers) if text is None]
        if len(asked) > 1:
            picked = self._ask_pack(model, [items[i] for i in asked])
            for i, text in zip(asked, picked, strict=True):
                answers[i] = text
        return [
            self._llm(items[i], reserved=True) if text is None else text
            for i, text in enumerate(answers)
        ]

    def _ask_pack(self, model: Model, items: list[SubcallItem]) -> list[str | None]:
        """One sub-call for ``items``: each item's choice, or ``None`` where the reply gives
        none. The call's tokens are shared out among the items' trace events."""
        choices = items[0].choices or ()
        prompt = pack_prompt([item.prompt for item in items], choices, items[0].choice_notes)
        messages = _messages(items[0].system, prompt)
        calls = [
            self._start("llm", model.name, item, request_key("llm", item), messages)
            for item in items
        ]
        try:
            completion = self._shared.complete(
                model,
                messages,
                root=False,
                depth=self._depth + 1,
                choices=list(choices),
                choice_items=len(items),
                max_tokens=pack_max_tokens(len(items), choices),
            )
        except Exception as exc:
            traced, answer = self._failed(exc)
            for call_id, started in calls:
                self._end(call_id, "llm", model.name, started, "", traced)
            return [answer] * len(items)
        picked = read_pack(completion.text, len(items), choices)
        usage = completion.usage
        inputs = _shares(usage.input_tokens, len(items))
        outputs = _shares(usage.output_tokens, len(items))
        unread = f"no choice for this item in the reply to its pack of {len(items)}; asked alone"
        for (call_id, started), choice, tokens_in, tokens_out in zip(
            calls, picked, inputs, outputs, strict=True
        ):
            error = None if choice is not None else unread
            self._end(
                call_id,
                "llm",
                model.name,
                started,
                choice or "",
                error,
                tokens_in,
                tokens_out,
                cache_hit=usage.cache_hit,
            )
        return list(picked)

    def _failed(self, exc: Exception) -> tuple[str, str]:
        """A failed sub-LLM call: the error its trace event records, and the text its item gets
        (a spent budget is the same refusal in both)."""
        if isinstance(exc, BudgetSpent):
            refused = self._over_budget("llm", exc.limit)
            return refused, refused
        message = str(exc) or type(exc).__name__
        return message, error_text("llm_query", message)

    def _chosen(
        self,
        model: Model,
        messages: list[Message],
        first: Completion,
        choices: tuple[str, ...],
    ) -> tuple[Completion, str, str | None]:
        """Read ``first`` back to one of ``choices``; ask once more when it names none.

        Returns the completion with the usage of both calls, the choice, and an error when
        neither reply named exactly one choice.
        """
        chosen = match_choice(first.text, choices)
        if chosen is not None:
            return first, chosen, None
        retry: list[Message] = [
            *messages,
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": retry_instruction(choices)},
        ]
        second = self._call(model, retry, self._depth + 1, choices)
        usage = first.usage + second.usage
        both = Completion(text=second.text, usage=usage, model=second.model)
        chosen = match_choice(second.text, choices)
        if chosen is not None:
            return both, chosen, None
        return both, "", f"the reply named none of the choices: {second.text[:80]!r}"

    def _call(
        self,
        model: Model,
        messages: list[Message],
        depth: int,
        choices: tuple[str, ...] | None = None,
    ) -> Completion:
        """One model call, accounted at once. With ``choices`` the output is bounded and a client
        that can constrain decoding is asked to emit only a choice."""
        options: dict[str, Any] = {}
        if choices:
            options = {"choices": list(choices), "max_tokens": choice_max_tokens(choices)}
        return self._shared.complete(model, messages, root=False, depth=depth, **options)

    def _complete(
        self,
        model: Model,
        messages: list[Message],
        call_id: int,
        depth: int,
        choices: tuple[str, ...] | None = None,
    ) -> Completion:
        """One sub-LLM answer: a single call, or the tool loop when the run has tools (where
        ``choices`` only bound the final reply, read back by the caller).

        Every model call is accounted at once, so tool-loop turns count against the budget.
        """
        shared = self._shared

        def once(convo: list[Message]) -> Completion:
            return self._call(model, convo, depth)

        if not shared.tools:
            return self._call(model, messages, depth, choices)

        def on_tool(outcome: ToolOutcome) -> None:
            shared.emit(
                ToolCall(
                    t=shared.trace.elapsed(),
                    depth=depth,
                    call_id=call_id,
                    turn=outcome.turn,
                    tool=outcome.tool,
                    arguments=outcome.arguments,
                    result=outcome.result[:_PREVIEW],
                    error=outcome.error,
                    latency_s=outcome.latency_s,
                )
            )

        def should_stop() -> str | None:
            # Only the limits a tool turn spends end the loop (not iterations or sub_calls).
            if shared.cancelled.is_set():
                return "the run was cancelled"
            left = shared.meter.remaining()
            spent = [
                k for k in ("tokens", "usd", "seconds") if left[k] is not None and left[k] <= 0
            ]
            return f"the run's {spent[0]} budget is spent" if spent else None

        return run_tool_loop(
            once,
            messages,
            shared.tools,
            max_turns=shared.tool_turns,
            on_tool=on_tool,
            should_stop=should_stop,
            model=model,  # native tool calling where the client supports it
            account=lambda usage: shared.account(
                root=False, depth=depth, model=model.name, usage=usage
            ),
            options=shared.call_options(),
        )

    def _start(
        self,
        kind: str,
        model: str,
        item: SubcallItem,
        key: str,
        messages: list[Message] | None = None,
    ) -> tuple[int, float]:
        """Trace the start of a sub-call (with its ``messages`` when the trace records them);
        returns its id and start time."""
        call_id = self._shared.next_id()
        full = None
        if messages is not None and self._shared.trace.subcall_messages:
            full = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        self._shared.emit(
            SubcallStart(
                t=self._shared.trace.elapsed(),
                depth=self._depth + 1,
                call_id=call_id,
                kind=kind,
                model=model,
                prompt_chars=len(item.prompt),
                prompt_preview=item.prompt[:_PREVIEW],
                key=key,
                messages=full,
            )
        )
        return call_id, time.monotonic()

    def _end(
        self,
        call_id: int,
        kind: str,
        model: str,
        started: float,
        response: str,
        error: str | None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        *,
        cache_hit: bool = False,
    ) -> None:
        self._shared.emit(
            SubcallEnd(
                t=self._shared.trace.elapsed(),
                depth=self._depth + 1,
                call_id=call_id,
                kind=kind,
                model=model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                latency_s=time.monotonic() - started,
                response=response,
                error=error,
                cache_hit=cache_hit,
            )
        )

    def _tool(self, item: SubcallItem) -> str:
        """One ``tool`` request from the sandbox (``prompt``: the name, ``context``: the
        arguments), answered by the run's extension, if it has one; traced as a ``tool_call``."""
        shared = self._shared
        call_id, started = shared.next_id(), time.monotonic()
        extension = shared.options.extension
        outcome: tuple[str, str | None, dict[str, Any]] = ("", "the run was cancelled", {})
        if extension is None:
            none = f"no tool named {item.prompt[:64]!r}; the tools are: none in this run"
            outcome = ("", none, {})
        elif not shared.cancelled.is_set():
            outcome = extension.call(item.prompt, item.context)
        result, error, arguments = outcome
        shared.emit(
            ToolCall(
                t=shared.trace.elapsed(),
                depth=self._depth,
                call_id=call_id,
                turn=next(self._tool_calls),
                tool=item.prompt[:64],
                arguments=arguments,
                result=result[:_PREVIEW],
                error=error,
                latency_s=time.monotonic() - started,
            )
        )
        return result if error is None else error_text(item.prompt[:64], error)

    def _rlm(self, item: SubcallItem) -> str:
        child_depth = self._depth + 1
        if child_depth >= self._shared.budget.depth:
            # Past the depth limit a child RLM is a plain sub-call over the same text.
            prompt = item.prompt
            if item.context is not None:
                text = item.context if isinstance(item.context, str) else json.dumps(item.context)
                prompt = f"{prompt}\n\nContext:\n{text}"
            plain = SubcallItem(prompt=prompt, system=item.system, model=item.model)
            return self._llm(plain, key=request_key("rlm", item))
        return self._child(item, child_depth)

    def _child(self, item: SubcallItem, child_depth: int) -> str:
        """A child RLM run, traced as one ``rlm`` sub-call around the child's own events."""
        if self._shared.meter.exhausted() not in (None, "iterations"):
            return self._over_budget("rlm")  # no sandbox is started for a child that cannot run
        # The child's own calls are accounted by its engine: this event carries no tokens.
        model = self._shared.root_model.name
        call_id, started = self._start("rlm", model, item, request_key("rlm", item))
        answer = self._run_child(item.prompt, item.context, child_depth)
        self._end(call_id, "rlm", model, started, answer, None)
        return answer


def _messages(system: str | None, prompt: str) -> list[Message]:
    """A sub-call's messages: its system text, if any, then its prompt."""
    head: list[Message] = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}]


def _packs(members: list[int], lengths: list[int], size: int) -> list[list[int]]:
    """``members`` in order, cut into packs of at most ``size`` items and about ``_PACK_CHARS``
    characters, whose sizes differ by one at most (no small last pack)."""
    count = max(-(-len(members) // size), -(-sum(lengths) // _PACK_CHARS))
    packs: list[list[int]] = []
    start = 0
    for want in _shares(len(members), count):
        packs.append(members[start : start + want])
        start += want
    return packs


def _shares(total: int, count: int) -> list[int]:
    """``total`` cut into ``count`` whole parts that differ by at most one and sum to it."""
    return [total // count + (1 if i < total % count else 0) for i in range(count)]
