"""The root loop of one RLM run.

``Engine.run`` reads as the algorithm: start the sandbox, ask the root model, run its code, report
the output back, stop when ``answer["ready"]`` or a budget ends. Each step is a named method.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ctxfold import prompts
from ctxfold.broker import Broker
from ctxfold.budget import BudgetSpent
from ctxfold.context import PreparedContext, prepare_contexts, shown_names
from ctxfold.engine._code import extract_code
from ctxfold.engine._resume import ReplayHandler, ResumeState
from ctxfold.engine._run import RunShared
from ctxfold.engine._workspace import Workspace
from ctxfold.errors import CtxfoldError
from ctxfold.models import CHARS_PER_TOKEN, Message
from ctxfold.sandbox import AnswerState, Sandbox, SourceSpan, host_temp_dir
from ctxfold.schema import AnswerSchema, SchemaMismatch, candidate
from ctxfold.tools import root_tools_note
from ctxfold.trace import (
    AnswerUpdate,
    BudgetStop,
    Cell,
    Compaction,
    Feedback,
    Guard,
    RootPrompt,
    RootRequest,
    RootResponse,
    WorkerRestart,
)

_UNSET_READY = 'answer["ready"] = False'
_NOTES_CHARS = 1000  # about what the root model's notes of compacted turns take
_SHARED_LIMITS = ("tokens", "usd", "seconds", "sub_calls")  # one meter for the whole run


def _code_key(code: str) -> str:
    return " ".join(code.split())


@dataclass(slots=True)
class Outcome:
    """How one engine's run ended."""

    answer: str
    ready: bool
    stop_reason: (
        str  # "ready", a budget name ("iterations", "tokens", ...), "max_errors", "error: ..."
    )
    turns: int
    value: Any = None  # the checked value of a typed answer (``schema=``), else None
    sources: tuple[SourceSpan, ...] = ()  # the spans of answer["sources"], unchecked


@dataclass(slots=True)
class _Loop:
    """Mutable state of the loop."""

    messages: list[Message]
    prefix_len: int  # system + demonstration + task message: never trimmed
    turn: int = 0
    answer: AnswerState = field(default_factory=AnswerState)
    best: str = ""  # the last non-empty answer content (survives a worker restart)
    seen_output: bool = False  # the root model has been shown printed output at least once
    ready_refused: bool = False  # the early-ready guard fires once per run at most
    consecutive_errors: int = 0
    stop_reason: str | None = None
    cells_run: dict[str, int] = field(default_factory=dict)  # normalised code -> turn it ran
    transcript: list[Message] = field(default_factory=list)  # every message, never trimmed
    value: Any = None  # the checked value of the ready answer


class Engine:
    """Runs the root loop at ``depth`` (0 for the top run; child RLMs are deeper)."""

    def __init__(self, shared: RunShared, depth: int = 0) -> None:
        self._shared = shared
        self._depth = depth
        self._profile = prompts.profile(shared.options.prompt_profile)
        self._schema: AnswerSchema | None = None
        self._workspace: Workspace | None = None

    def run(
        self,
        question: str,
        contexts: list[PreparedContext],
        replay: ResumeState | None = None,
        *,
        schema: AnswerSchema | None = None,
    ) -> Outcome:
        """Answer ``question`` over prepared ``contexts`` in a workspace of its own, closed at
        the end. With ``replay``, the recorded turns of a killed run are replayed first (see
        _resume.py)."""
        workspace = self.open_workspace(contexts, question)
        broker = Broker(self._shared, self._depth, self._run_child)
        handler = broker.handle if replay is None else ReplayHandler(replay.answers, broker.handle)
        workspace.route(handler)
        try:
            return self.answer(workspace, question, contexts, replay=replay, schema=schema)
        finally:
            workspace.close()
            broker.close()

    def ask(
        self,
        workspace: Workspace,
        question: str,
        contexts: list[PreparedContext],
        *,
        schema: AnswerSchema | None = None,
        earlier: str = "",
        replay: ResumeState | None = None,
    ) -> Outcome:
        """Answer one question of a session in its open ``workspace``, whose sub-calls come to
        this run's broker meanwhile (with ``replay``, from the trace first)."""
        broker = Broker(self._shared, self._depth, self._run_child)
        handler = broker.handle if replay is None else ReplayHandler(replay.answers, broker.handle)
        workspace.route(handler)
        try:
            return self.answer(
                workspace, question, contexts, schema=schema, earlier=earlier, replay=replay
            )
        finally:
            workspace.route(None)
            broker.close()

    def open_workspace(self, contexts: list[PreparedContext], question: str) -> Workspace:
        """A workspace for these inputs, starting in the background while the first root call
        is made: neither waits for the other."""
        shared = self._shared
        workspace = Workspace(shared.make_sandbox(), cell_seconds=shared.budget.cell_seconds)
        extension = shared.options.extension
        setup = extension.setup_code() if extension is not None else None
        cells = [(setup, "the extension's set-up")] if setup else []
        # ``question`` in the REPL: code can search for its words without copying them (small
        # models copy the wrong text).
        cells.append((f"question = {question!r}", "the question"))
        workspace.start(contexts, output_limit=shared.options.output_limit, setup=cells)
        return workspace

    def answer(
        self,
        workspace: Workspace,
        question: str,
        contexts: list[PreparedContext],
        *,
        replay: ResumeState | None = None,
        schema: AnswerSchema | None = None,
        earlier: str = "",
    ) -> Outcome:
        """The root loop for one question in ``workspace`` (which stays open). ``earlier``: what
        the root model is told of earlier questions of a session."""
        self._schema = schema
        self._workspace = workspace
        loop = self._first_messages(question, contexts, earlier)
        first = [dict(m) for m in loop.messages]
        self._shared.emit(RootPrompt(t=self._now(), depth=self._depth, messages=first))
        if replay is not None:
            self._replay(workspace.ready(), loop, replay)
        while loop.stop_reason is None:
            loop.stop_reason = self._budget_stop(loop)
            if loop.stop_reason:
                break
            reply = self._ask_root(loop)
            if reply is None:
                break
            self._run_reply(workspace.ready(), reply, loop)
        return self._finish(loop)

    # -- steps -------------------------------------------------------------------------------

    def _first_messages(
        self, question: str, contexts: list[PreparedContext], earlier: str = ""
    ) -> _Loop:
        """The conversation the root model starts from, as its profile (or an extension) words
        it: the question stays the last thing it reads."""
        opts, sub, profile = self._shared.options, self._shared.sub_model, self._profile
        names = shown_names(len(contexts))
        summary = (
            contexts[0].shape
            if len(contexts) == 1
            else f"{len(contexts)} inputs, also named " + ", ".join(names)
        )
        sub_calls = self._shared.budget.depth > 0
        ext = opts.extension
        system = (
            ext.system_prompt(profile.name, context_summary=summary, output_limit=opts.output_limit)
            if ext is not None
            else None
        ) or prompts.system_prompt(
            profile.name,
            context_summary=summary,
            output_limit=opts.output_limit,
            sub_window=(sub.context_window or 32_000) * CHARS_PER_TOKEN,
            sub_calls=sub_calls,
            tools_note=root_tools_note(self._shared.tools) if sub_calls else "",
            answer_note=self._answer_note(contexts),
        )
        demo = ext.demonstration(profile.name) if ext is not None else None
        if demo is None:
            demo = prompts.demonstration(profile.name, question=question, sub_calls=sub_calls)
        inputs = [(n, c.description) for n, c in zip(names, contexts, strict=True)]
        messages = profile.first_messages(
            question, inputs, system=system, demonstration=demo, earlier=earlier
        )
        return _Loop(messages=messages, prefix_len=len(messages), transcript=list(messages))

    def _answer_note(self, contexts: list[PreparedContext]) -> str:
        kind = contexts[0].kind if contexts else ""
        cite = {"text_file": "chars", "folder": "lines"}.get(kind)
        if not self._profile.asks_for_citations:
            cite = None
        schema = self._schema.shown() if self._schema is not None else None
        return prompts.answer_note(schema=schema, cite=cite)

    def _budget_stop(self, loop: _Loop) -> str | None:
        if self._shared.cancelled.is_set():
            return "cancelled"
        spent = self._shared.meter.exhausted() if self._depth == 0 else self._child_spent(loop)
        if spent:
            self._shared.emit(BudgetStop(t=self._now(), depth=self._depth, reason=spent))
        return spent

    def _child_spent(self, loop: _Loop) -> str | None:
        # A child run has the run's shared limits but its own iteration count.
        if loop.turn >= self._shared.budget.iterations:
            return "iterations"
        spent = self._shared.meter.exhausted()
        return None if spent == "iterations" else spent

    def _ask_root(self, loop: _Loop) -> str | None:
        """One root-model turn; ``None`` (with ``loop.stop_reason`` set) if the model failed."""
        shared = self._shared
        loop.turn += 1
        if self._depth == 0:
            shared.meter.add_iteration()
        elif not shared.meter.reserve_sub_call():  # a child's turns are sub-calls of the run
            loop.stop_reason = shared.meter.exhausted() or "sub_calls"
            return None
        chars = self._trim_history(loop)
        shared.emit(
            RootRequest(
                t=self._now(),
                depth=self._depth,
                turn=loop.turn,
                messages=len(loop.messages),
                chars=chars,
            )
        )
        started = time.monotonic()
        try:
            completion = shared.complete(
                shared.root_model,
                loop.messages,
                root=True,
                depth=self._depth,
                cache_prefix=loop.prefix_len,  # system prompt and demonstration: cacheable
            )
        except BudgetSpent as exc:
            loop.stop_reason = exc.limit
            return None
        except CtxfoldError as exc:
            loop.stop_reason = f"error: {exc}"
            return None
        shared.emit(
            RootResponse(
                t=self._now(),
                depth=self._depth,
                turn=loop.turn,
                text=completion.text,
                model=shared.root_model.name,
                input_tokens=completion.usage.input_tokens,
                output_tokens=completion.usage.output_tokens,
                latency_s=time.monotonic() - started,
                cache_hit=completion.usage.cache_hit,
            )
        )
        return completion.text

    def _run_reply(self, sandbox: Sandbox, reply: str, loop: _Loop, replayed: int = 0) -> None:
        """Run the code blocks of a reply in order and tell the model what happened.

        ``replayed``: the first blocks already ran and were traced before a resume; they run
        again to rebuild the REPL, without being traced twice."""
        loop.messages.append({"role": "assistant", "content": reply})
        loop.transcript.append(loop.messages[-1])
        blocks = extract_code(reply)
        if not blocks:
            self._guard(loop, "no code in the reply")
            self._tell(loop, self._profile.no_code())
            return
        repeated = self._repeated_turn(loop, blocks) if self._profile.repeated_code_guard else None
        if (
            repeated is not None
        ):  # small models loop on one cell; running it again shows nothing new
            self._guard(loop, f"code repeated from turn {repeated}")
            self._tell(loop, self._profile.repeated_code(repeated, self._turns_left(loop)))
            return
        cells = []
        for index, code in enumerate(blocks):
            cell = sandbox.execute(code, timeout=self._shared.budget.cell_seconds)
            cells.append(cell)
            self._record_cell(loop, index, code, cell, traced=index < replayed)
            # output the same cell printed counts: ``print(x)`` then ``FINAL(x)`` is fine
            loop.seen_output = loop.seen_output or bool(cell.stdout.strip())
            if cell.answer.ready and not (loop.seen_output or loop.ready_refused):
                self._refuse_ready(sandbox, loop, cell)
                loop.cells_run.pop(_code_key(code), None)  # sending it again is the confirmation
            if cell.answer.ready and self._schema is not None:
                self._check_schema(sandbox, loop, cell, self._schema)
            if cell.answer.ready or self._too_many_errors(loop, cell):
                break
        if loop.answer.ready:
            loop.stop_reason = "ready"
            return
        seconds, left = self._shared.budget.cell_seconds, self._turns_left(loop)
        self._tell(loop, self._profile.feedback(cells, cell_seconds=seconds, turns_left=left))

    def _repeated_turn(self, loop: _Loop, blocks: list[str]) -> int | None:
        """The turn that already ran every block of this reply, if one did; records the blocks."""
        keys = [_code_key(code) for code in blocks]
        earlier = [loop.cells_run.get(key) for key in keys]
        if all(turn is not None for turn in earlier):
            return max(turn for turn in earlier if turn is not None)
        for key in keys:
            loop.cells_run.setdefault(key, loop.turn)
        return None

    def _tell(self, loop: _Loop, content: str) -> None:
        """Send the root model a user message after its turn (recorded for resume)."""
        loop.messages.append({"role": "user", "content": content})
        loop.transcript.append(loop.messages[-1])
        self._shared.emit(
            Feedback(t=self._now(), depth=self._depth, turn=loop.turn, content=content)
        )

    def _replay(self, sandbox: Sandbox, loop: _Loop, replay: ResumeState) -> None:
        """Rebuild a killed run: its conversation, and its REPL state by re-running its cells."""
        timeout = self._shared.budget.cell_seconds
        for turn in replay.turns:
            loop.turn = turn.turn
            replayed: list[Message] = [
                {"role": "assistant", "content": turn.reply},
                {"role": "user", "content": turn.feedback or ""},
            ]
            loop.messages.extend(replayed)
            loop.transcript.extend(replayed)  # `history` holds them as the first run's did
            for code in turn.cells:
                sandbox.execute(code, timeout=timeout)
                loop.cells_run.setdefault(_code_key(code), turn.turn)
            loop.seen_output = loop.seen_output or turn.printed
        sandbox.execute(_UNSET_READY, timeout=timeout)
        loop.answer = AnswerState(replay.answer.content, False)
        loop.best = replay.best
        if replay.partial is not None:  # its reply came before the kill: run it, don't re-ask
            loop.turn = replay.partial.turn
            self._run_reply(sandbox, replay.partial.reply, loop, len(replay.partial.cells))

    def _record_cell(
        self, loop: _Loop, index: int, code: str, cell: Any, *, traced: bool = False
    ) -> None:
        """Trace a cell (unless it was ``traced`` before a resume) and adopt its answer."""
        if traced:
            loop.answer = cell.answer
            loop.best = cell.answer.content or loop.best
            return
        shared = self._shared
        shared.emit(
            Cell(
                t=self._now(),
                depth=self._depth,
                turn=loop.turn,
                index=index,
                code=code,
                stdout=cell.stdout,
                stderr=cell.stderr,
                error=cell.error,
                timed_out=cell.timed_out,
                restarted=cell.restarted,
                duration_s=cell.duration_s,
                restored=list(cell.restored),
            )
        )
        if cell.restarted:
            reason = (cell.error or "worker died").splitlines()[0][:300]
            shared.emit(
                WorkerRestart(t=self._now(), depth=self._depth, turn=loop.turn, reason=reason)
            )
        if cell.answer_changed or cell.answer != loop.answer:
            loop.answer = cell.answer
            loop.best = cell.answer.content or loop.best
            shared.emit(
                AnswerUpdate(
                    t=self._now(),
                    depth=self._depth,
                    turn=loop.turn,
                    content=cell.answer.content,
                    ready=cell.answer.ready,
                )
            )

    def _refuse_ready(self, sandbox: Sandbox, loop: _Loop, cell: Any) -> None:
        """``ready`` set before the model has seen any output: undo it and say why."""
        sandbox.execute(_UNSET_READY, timeout=self._shared.budget.cell_seconds)
        loop.ready_refused = True
        loop.answer = replace(loop.answer, ready=False)
        cell.answer = loop.answer
        cell.answer_changed = True
        self._guard(loop, "ready refused: no output seen yet")
        cell.stderr += self._profile.ready_refused()

    def _check_schema(self, sandbox: Sandbox, loop: _Loop, cell: Any, schema: AnswerSchema) -> None:
        """A ready answer must fit the schema: if it does not, undo ``ready`` and say why."""
        try:
            loop.value = schema.check(candidate(cell.answer.content, cell.answer.value))
            return
        except SchemaMismatch as exc:
            errors = str(exc)
        sandbox.execute(_UNSET_READY, timeout=self._shared.budget.cell_seconds)
        loop.answer = replace(loop.answer, ready=False)
        cell.answer = loop.answer
        cell.answer_changed = True
        self._guard(loop, "answer does not fit the schema")
        cell.stderr += self._profile.schema_mismatch(errors)

    def _too_many_errors(self, loop: _Loop, cell: Any) -> bool:
        loop.consecutive_errors = loop.consecutive_errors + 1 if cell.error else 0
        limit = self._shared.budget.max_errors
        if limit is not None and loop.consecutive_errors >= limit:
            loop.stop_reason = "max_errors"
            return True
        return False

    def _finish(self, loop: _Loop) -> Outcome:
        reason = loop.stop_reason or "iterations"
        sources = loop.answer.sources
        if loop.answer.ready:
            content = loop.answer.content
            if self._schema is not None:  # the text form of a typed answer is its JSON
                content = json.dumps(self._schema.as_json(loop.value), ensure_ascii=False)
            return Outcome(content, True, reason, loop.turn, loop.value, sources)
        content = loop.answer.content or loop.best or self._last_word(loop, reason)
        return Outcome(content, False, reason, loop.turn, None, sources)

    def _last_word(self, loop: _Loop, reason: str) -> str:
        """No answer when the budget ended: one last root call asks for the best answer."""
        if reason.startswith("error") or self._shared.cancelled.is_set():
            return ""
        if self._depth > 0 and reason in _SHARED_LIMITS:  # a child spends the run's budget
            return ""
        ask: Message = {"role": "user", "content": self._profile.final_request(reason)}
        messages = [*loop.messages]
        if messages[-1]["role"] == "user":
            messages[-1] = {
                "role": "user",
                "content": f"{messages[-1]['content']}\n\n{ask['content']}",
            }
        else:
            messages.append(ask)
        try:  # the last word is asked whatever the budget: it is what the user gets
            completion = self._shared.complete(
                self._shared.root_model, messages, root=True, depth=self._depth, claim=False
            )
        except CtxfoldError:
            return ""
        text = completion.text.strip()
        # Small models sometimes echo the request back; that is no answer.
        return "" if text and text in ask["content"] else text

    # -- helpers -----------------------------------------------------------------------------

    def _run_child(self, prompt: str, context: Any, depth: int) -> str:
        """Run a child RLM (``rlm_query``) with its own sandbox; returns its answer."""
        with tempfile.TemporaryDirectory(prefix="ctxfold-in-", dir=host_temp_dir()) as workdir:
            contexts = prepare_contexts(context, workdir=Path(workdir))
            outcome = Engine(self._shared, depth).run(prompt, contexts)
        return outcome.answer

    def _trim_history(self, loop: _Loop) -> int:
        """Keep the conversation under ``history_chars``: compact it past ``compact_chars``
        (see :meth:`_compact`), then elide old outputs, then drop old turns.

        Returns the conversation's size in characters after trimming.
        """
        limit = self._shared.options.history_chars
        msgs = loop.messages
        size = sum(len(m["content"]) for m in msgs)  # kept up to date below, not recounted
        compact_at = self._shared.options.compact_chars
        if compact_at is not None and size > compact_at:
            size = self._compact(loop, size)
        keep_tail = 4  # the last two exchanges stay whole
        i = loop.prefix_len
        while size > limit and i < len(msgs) - keep_tail:
            if msgs[i]["role"] == "user" and not msgs[i]["content"].startswith("[elided"):
                elided: Message = {"role": "user", "content": prompts.ELIDED}
                size += len(prompts.ELIDED) - len(msgs[i]["content"])
                msgs[i] = elided
            i += 1
        while size > limit and len(msgs) - loop.prefix_len > keep_tail:
            size -= sum(len(m["content"]) for m in msgs[loop.prefix_len : loop.prefix_len + 2])
            del msgs[loop.prefix_len : loop.prefix_len + 2]
        return size

    def _compact(self, loop: _Loop, size: int) -> int:
        """Replace the turns after the first messages, but the last exchange, by notes the root
        model writes of them; the REPL's ``history`` gets the whole conversation. On failure
        nothing changes (trimming follows). Returns the new size."""
        keep_tail = 2
        if len(loop.messages) - loop.prefix_len <= keep_tail + 2 or self._workspace is None:
            return size
        kept = sum(
            len(m["content"])
            for m in [*loop.messages[: loop.prefix_len], *loop.messages[-keep_tail:]]
        )
        threshold = self._shared.options.compact_chars or size
        if kept + _NOTES_CHARS > threshold // 2:  # it would soon be due again: trimming is cheaper
            return size
        request = f"{loop.messages[-1]['content']}\n\n{self._profile.compaction_request()}"
        messages: list[Message] = [*loop.messages[:-1], {"role": "user", "content": request}]
        try:
            completion = self._shared.complete(
                self._shared.root_model, messages, root=True, depth=self._depth
            )
            self._workspace.define("history", loop.transcript)
        except CtxfoldError:  # BudgetSpent included: trimming is the fallback
            return size
        summary = completion.text.strip()
        if not summary:
            return size
        tail = loop.messages[-keep_tail:]
        loop.messages[loop.prefix_len :] = [*self._profile.compacted(summary), *tail]
        after = sum(len(m["content"]) for m in loop.messages)
        self._shared.emit(
            Compaction(
                t=self._now(),
                depth=self._depth,
                turn=loop.turn,
                before_chars=size,
                after_chars=after,
                summary=summary,
            )
        )
        return after

    def _turns_left(self, loop: _Loop) -> int:
        return self._shared.budget.iterations - loop.turn

    def _guard(self, loop: _Loop, reason: str) -> None:
        self._shared.emit(Guard(t=self._now(), depth=self._depth, turn=loop.turn, reason=reason))

    def _now(self) -> float:
        return self._shared.trace.elapsed()
