"""Sessions: several questions about the same inputs, in one sandbox that keeps its variables.

``session = rlm.session(context=...)`` loads the inputs once; ``session.ask(question)`` answers
in turn. Each question is a run of its own in the trace (a ``run_start`` with the session's id
and the question's index, ... , a ``run_end``), with its own budget, capped by what is left of
the session's. The root model of a later question does not see the earlier conversations: it
is told the earlier questions, their answers and which variables the REPL now holds, and code
can read every answer given so far from ``answers``.
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ctxfold._threads import in_thread
from ctxfold.budget import Budget
from ctxfold.closing import Closing
from ctxfold.context import PreparedContext, prepare_contexts
from ctxfold.engine import (
    AskedRecord,
    Engine,
    EngineOptions,
    ReplayHandler,
    ResumeState,
    RunShared,
    Workspace,
)
from ctxfold.errors import CtxfoldError
from ctxfold.models import Model
from ctxfold.result import Result, finish_run
from ctxfold.sandbox import Sandbox, SubcallRequest
from ctxfold.schema import AnswerSchema
from ctxfold.tools import Tool
from ctxfold.trace import AnswerUpdate, RunResume, RunStart, Trace
from ctxfold.usage import Usage

_ANSWER_SHOWN = 600  # characters of an earlier answer shown to the root model
_VARS_SHOWN = 1500  # characters of the variable listing shown
_RESET_ANSWER = 'answer = {"content": "", "ready": False}'
_SHOW_VARS = "SHOW_VARS()"
_LIMITS = ("iterations", "tokens", "usd", "seconds", "sub_calls")


def _refuse(request: SubcallRequest) -> list[str] | dict[str, Any]:
    """A sub-call a replayed question makes that its trace has no answer for."""
    if request.kind == "budget":
        return {}
    return ["[error: this sub-call was not recorded]"] * len(request.items)


@dataclass(frozen=True, slots=True)
class SessionParts:
    """What a session needs of its :class:`~ctxfold.RLM` (made by ``RLM.session``)."""

    root_model: Model
    sub_model: Model
    models: dict[str, Model]
    budget: Budget
    options: EngineOptions
    make_sandbox: Callable[[], Sandbox]
    tools: tuple[Tool, ...]
    tool_turns: int
    version: str
    model_spec: str
    sub_model_spec: str


@dataclass(slots=True)
class _Asked:
    """One question of the session and what came of it."""

    question: str
    answer: str
    ready: bool
    stop_reason: str
    variables: str


@dataclass(slots=True)
class _Spent:
    """What the session's questions spent, against ``session_budget``."""

    iterations: int = 0
    tokens: int = 0
    usd: float = 0.0
    seconds: float = 0.0
    sub_calls: int = 0
    by: list[Usage] = field(default_factory=list)

    def add(self, result: Result) -> None:
        usage = result.usage
        self.iterations += result.iterations
        self.tokens += usage.total_tokens
        self.usd += usage.cost_usd or 0.0
        self.seconds += result.seconds
        self.sub_calls += usage.sub_calls


class Session(Closing):
    """A conversation about one set of inputs. Make one with :meth:`ctxfold.RLM.session`.

    Not thread-safe: one question at a time (:meth:`close` may come from another thread).
    """

    def __init__(
        self,
        parts: SessionParts,
        *,
        inputs: list[PreparedContext],
        workdir: Path,
        trace: Trace,
        session_budget: Budget | None = None,
        on_close: Callable[[], None] = lambda: None,
        session_id: str | None = None,
    ) -> None:
        if session_budget is not None and not isinstance(session_budget, Budget):
            kind = type(session_budget).__name__
            raise CtxfoldError(f"session_budget must be a ctxfold.Budget, got {kind}")
        self.id = session_id or uuid.uuid4().hex
        self.resumed: Result | None = None  # the interrupted question a resume finished
        self._parts = parts
        self._workdir = workdir
        self._on_close = on_close
        self._trace = trace
        self._session_budget = session_budget
        self._spent = _Spent()
        self._asked: list[_Asked] = []
        self._answers: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._inputs = list(inputs)
        budget = parts.budget
        self._workspace = Workspace(parts.make_sandbox(), cell_seconds=budget.cell_seconds)
        extension = parts.options.extension
        setup = extension.setup_code() if extension is not None else None
        cells = [(setup, "the extension's set-up")] if setup else []
        self._workspace.start(self._inputs, output_limit=parts.options.output_limit, setup=cells)

    @property
    def inputs(self) -> list[PreparedContext]:
        """The session's inputs, in the order they were given (``context_0``, ...)."""
        return list(self._inputs)

    @property
    def answers(self) -> list[dict[str, Any]]:
        """Every version of every answer so far, oldest first (``question``, ``content``,
        ``ready``, ``index``); the REPL has the same list as ``answers``."""
        return [dict(a) for a in self._answers]

    def ask(self, question: str, *, schema: Any = None, budget: Budget | None = None) -> Result:
        """Answer ``question``; the REPL's variables from earlier questions are still there.

        ``budget`` replaces the RLM's budget for this question; either is capped by what is
        left of the session's budget. ``schema`` asks for a typed answer (see
        :meth:`ctxfold.RLM.run`).

        Raises:
            CtxfoldError: the session is closed, the question or schema is bad, or the
                session's budget is spent. The session stays usable after any of these.
        """
        if not isinstance(question, str) or not question.strip():
            raise CtxfoldError("question must be a non-empty string")
        checked = AnswerSchema.of(schema) if schema is not None else None
        if budget is not None and not isinstance(budget, Budget):
            raise CtxfoldError(f"budget must be a ctxfold.Budget, got {type(budget).__name__}")
        with self._lock:
            if self._closed:
                raise CtxfoldError("this session is closed; start a new one with rlm.session()")
            question_budget = self._capped(budget or self._parts.budget)
            return self._ask(question, checked, question_budget)

    async def aask(
        self, question: str, *, schema: Any = None, budget: Budget | None = None
    ) -> Result:
        """Like :meth:`ask`, for asyncio code (the question is answered in a worker thread)."""
        return await in_thread(functools.partial(self.ask, question, schema=schema, budget=budget))

    def add_context(self, value: Any) -> str:
        """Add an input (anything ``context=`` takes); it becomes ``context_N`` in the REPL,
        for this and later questions. Returns its name.

        Raises:
            CtxfoldError: the session is closed, the input is bad, or the sandbox cannot
                take it.
        """
        with self._lock:
            if self._closed:
                raise CtxfoldError("this session is closed; start a new one with rlm.session()")
            index = len(self._inputs)
            [prepared] = prepare_contexts(
                contexts=[value], workdir=self._workdir, first_index=index
            )
            self._workspace.ready().add_input(prepared.spec)
            self._inputs.append(prepared)
            return prepared.name

    def variables(self) -> str:
        """The variables the REPL holds now (name, type, size), one per line; ``""`` if none."""
        with self._lock:
            if self._closed:
                raise CtxfoldError("this session is closed; start a new one with rlm.session()")
            return self._variables(limit=None)

    def close(self) -> None:
        """Stop the sandbox and close the trace (idempotent). A question being answered in
        another thread then fails."""
        if self._closed:
            return
        self._closed = True
        try:
            self._workspace.close()
            self._trace.close()
        finally:
            self._on_close()

    # -- resuming ----------------------------------------------------------------------------

    def resume(self, state: ResumeState, budget: Budget | None = None) -> Result:
        """Rebuild a killed session from its trace: run the finished questions' cells again
        (their sub-calls answered from the trace), then finish the interrupted question as a
        resumed run does. Used by :meth:`ctxfold.RLM.resume_session`."""
        with self._lock:
            for asked in state.earlier:
                self._replay_asked(asked)
            start = state.start
            schema = AnswerSchema.of(start.schema) if start.schema is not None else None
            result = self._ask(
                start.question, schema, self._capped(budget or self._parts.budget), state
            )
            self.resumed = result
            return result

    def _replay_asked(self, asked: AskedRecord) -> None:
        question = asked.start.question
        self._prepare_repl(question)
        self._workspace.route(ReplayHandler(asked.answers, _refuse))
        sandbox = self._workspace.ready()
        try:
            for code in asked.cells:
                sandbox.execute(code, timeout=self._parts.budget.cell_seconds)
        finally:
            self._workspace.route(None)
        index = len(self._asked)
        for content, ready in asked.updates:
            self._answers.append(
                {"question": question, "index": index, "content": content, "ready": ready}
            )
        end = asked.end
        answer, ready = (end.answer, end.ready) if end is not None else ("", False)
        reason = end.stop_reason if end is not None else "interrupted"
        if end is not None:
            usage = Usage.from_dict(end.usage)
            self._spent.tokens += usage.total_tokens
            self._spent.usd += usage.cost_usd or 0.0
            self._spent.sub_calls += usage.sub_calls
            self._spent.iterations += usage.root_calls
            self._spent.seconds += end.seconds
        self._asked.append(_Asked(question, answer, ready, reason, self._variables()))

    # -- one question ------------------------------------------------------------------------

    def _capped(self, budget: Budget) -> Budget:
        """``budget`` capped by what is left of the session's; raises when nothing is left."""
        whole = self._session_budget
        if whole is None:
            return budget
        capped: dict[str, Any] = {}
        for name in _LIMITS:
            limit = getattr(whole, name)
            if limit is None:
                continue
            left = limit - getattr(self._spent, name)
            if left <= 0:
                raise CtxfoldError(f"the session's budget is spent ({name}); start a new session")
            mine = getattr(budget, name)
            capped[name] = left if mine is None else min(mine, left)
        return replace(budget, **capped)

    def _ask(
        self,
        question: str,
        schema: AnswerSchema | None,
        budget: Budget,
        replay: ResumeState | None = None,
    ) -> Result:
        parts = self._parts
        shared = RunShared(
            root_model=parts.root_model,
            sub_model=parts.sub_model,
            models=parts.models,
            budget=budget,
            options=parts.options,
            make_sandbox=parts.make_sandbox,
            trace=self._trace,
            tools=parts.tools,
            tool_turns=parts.tool_turns,
        )
        index = len(self._asked)
        if replay is None:
            shared.emit(self._run_start(question, index, budget, schema))
        else:
            shared.emit(RunResume(t=self._trace.elapsed(), turns=len(replay.turns)))
            replay.restore_meters(shared)
        first_event = len(self._trace)
        try:
            self._prepare_repl(question)
            outcome = Engine(shared).ask(
                self._workspace,
                question,
                self._inputs,
                schema=schema,
                earlier=self._earlier(),
                replay=replay,
            )
        except BaseException:
            shared.cancelled.set()
            shared.end_run("", False, "interrupted", seconds=shared.meter.elapsed())
            raise
        result = finish_run(shared, outcome, self._inputs, shared.meter.elapsed)
        self._spent.add(result)
        self._remember(question, index, result, first_event)
        return result

    def _run_start(
        self, question: str, index: int, budget: Budget, schema: AnswerSchema | None
    ) -> RunStart:
        parts = self._parts
        return RunStart(
            t=self._trace.elapsed(),
            run_id=uuid.uuid4().hex,
            question=question,
            model=parts.root_model.name,
            sub_model=parts.sub_model.name,
            budget=asdict(budget),
            contexts=[c.description for c in self._inputs],
            isolation=self._workspace.isolation,
            version=parts.version,
            model_spec=parts.model_spec,
            sub_model_spec=parts.sub_model_spec,
            inputs=[{**c.spec, "shape": c.shape, "preview": c.preview} for c in self._inputs],
            schema=schema.json_schema if schema is not None else None,
            session=self.id,
            index=index,
        )

    def _prepare_repl(self, question: str) -> None:
        """The REPL for a new question: ``question``, ``answers``, an empty ``answer``."""
        workspace = self._workspace
        workspace.define("question", question, what="the question")
        workspace.define("answers", self._answers)
        error = workspace.ready().setup(_RESET_ANSWER).error
        if error:
            raise CtxfoldError(f"could not reset answer in the sandbox: {error[-300:]}")

    def _earlier(self) -> str:
        """What the root model is told of the earlier questions."""
        lines = []
        for number, asked in enumerate(self._asked, 1):
            answer = " ".join(asked.answer.split())
            if len(answer) > _ANSWER_SHOWN:
                answer = answer[:_ANSWER_SHOWN] + " ..."
            state = "final" if asked.ready else f"not final: {asked.stop_reason}"
            lines.append(f"{number}. Question: {asked.question}\n   Answer ({state}): {answer}")
        if self._asked and self._asked[-1].variables:
            lines.append(f"Variables in the REPL now:\n{self._asked[-1].variables}")
        return "\n".join(lines)

    def _remember(self, question: str, index: int, result: Result, first_event: int) -> None:
        for event in self._trace.events[first_event:]:
            if isinstance(event, AnswerUpdate) and event.depth == 0:
                self._answers.append(
                    {
                        "question": question,
                        "index": index,
                        "content": event.content,
                        "ready": event.ready,
                    }
                )
        final: dict[str, Any] = {
            "question": question,
            "index": index,
            "content": result.answer,
            "ready": result.ready,
        }
        if result.value is not None:
            final["value"] = json.loads(result.answer)
        last = self._answers[-1] if self._answers else None
        if last is not None and last["index"] == index and last["content"] == result.answer:
            last.update(final)  # the last version is the answer: not listed twice
        else:
            self._answers.append(final)
        self._asked.append(
            _Asked(question, result.answer, result.ready, result.stop_reason, self._variables())
        )

    def _variables(self, limit: int | None = _VARS_SHOWN) -> str:
        try:
            listed = self._workspace.ready().setup(_SHOW_VARS).stdout.strip()
        except CtxfoldError:
            return ""
        if listed.startswith("(no variables"):
            return ""
        if limit is None or len(listed) <= limit:
            return listed
        return listed[:limit] + " ..."
