"""The public entry point: :class:`RLM` and the :class:`Result` of a run."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ctxfold._threads import in_thread
from ctxfold.budget import Budget, budget_from_dict
from ctxfold.cache import CachedModel, ResponseCache
from ctxfold.context import PreparedContext, prepare_contexts
from ctxfold.engine import (
    Engine,
    EngineOptions,
    Extension,
    ResumeState,
    RunShared,
    load_resume_state,
)
from ctxfold.errors import ContextError, CtxfoldError, UntrustedSpecError, quoted
from ctxfold.models import (
    CHARS_PER_TOKEN,
    Model,
    foreign_endpoint,
    resolve_model,
    warn_if_unpriced,
)
from ctxfold.prompts import PROFILES, profile_for
from ctxfold.result import Result, finish_run
from ctxfold.sandbox import (
    ContextSpec,
    ProcessSandbox,
    Sandbox,
    SparePool,
    host_temp_dir,
    make_sandbox,
    remove_soon,
)
from ctxfold.schema import AnswerSchema
from ctxfold.session import Session, SessionParts
from ctxfold.tools import DEFAULT_TURNS, as_tools
from ctxfold.trace import RunResume, RunStart, Trace

__version__ = "0.1.0"

SandboxSpec = str | Sandbox | Callable[[], Sandbox]


@contextmanager
def _inputs_dir(keep: Path | None) -> Iterator[Path]:
    """Where in-memory inputs are written: ``keep`` (left in place) or a temporary folder."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    workdir = tempfile.mkdtemp(prefix="ctxfold-in-", dir=host_temp_dir())
    try:
        yield Path(workdir)
    finally:
        remove_soon(workdir)  # gone now, deleted in the background


def _check_count(value: object, name: str) -> None:
    """A one-line :class:`CtxfoldError` unless ``value`` is a whole number >= 1 (not ``True``)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CtxfoldError(f"{name} must be a whole number >= 1, got {value!r}")


def _recorded_inputs(start: RunStart) -> list[PreparedContext]:
    """The inputs of a recorded run, checked to be well-formed and still there."""
    prepared = []
    for number, spec in enumerate(start.inputs):
        name, kind, path = spec.get("name"), spec.get("kind"), spec.get("path")
        files = spec.get("files", [])
        if not (
            isinstance(name, str)
            and kind in _INPUT_KINDS
            and isinstance(path, str)
            and isinstance(files, list)
            and all(isinstance(f, str) for f in files)
        ):
            raise CtxfoldError(f"the trace's input {number} is malformed")
        if not Path(path).exists():
            raise ContextError(f"input {name} of that run is gone: {quoted(path)}")
        shape, preview = spec.get("shape"), spec.get("preview", "")
        if not isinstance(shape, str) or not isinstance(preview, str):  # an older trace
            shape = start.contexts[number] if number < len(start.contexts) else name
            preview = ""
        context_spec = ContextSpec(name=name, kind=kind, path=path, files=files)
        prepared.append(PreparedContext(context_spec, shape, preview, 0))
    return prepared


_INPUT_KINDS = ("text_file", "bytes_file", "json_file", "folder")


def _response_cache(
    cache: str | os.PathLike[str] | bool | ResponseCache | None,
) -> ResponseCache | None:
    if cache is None or cache is False:
        return None
    if isinstance(cache, ResponseCache):
        return cache
    if cache is True:
        return ResponseCache()
    if isinstance(cache, str | os.PathLike):
        return ResponseCache(cache)
    raise CtxfoldError(f"cache must be True, a path or a ResponseCache, got {cache!r}")


def _trusted_spec(recorded: str, given: str | Model | None, what: str, trust: bool) -> str | Model:
    """The model a resumed run uses: ``given``, else the trace's ``recorded`` spec, unless that
    spec would send requests (and the user's API key) to an endpoint other than the user's own
    configuration and ``trust`` is off: a trace from someone else is not trusted blindly."""
    if given is not None:
        return given
    if not recorded:
        raise CtxfoldError(f"the trace records no {what} spec (a model object?): pass {what}=")
    endpoint = foreign_endpoint(recorded)
    if endpoint is not None and not trust:
        raise UntrustedSpecError(
            f"the trace's {what} spec {recorded!r} sends requests to {endpoint}, not to your "
            f"configured endpoint; pass {what}= (CLI: --{what.replace('_', '-')}) to choose "
            "the model, or trust_trace=True if you trust this trace"
        )
    return recorded


class RLM:
    """A Recursive Language Model: a root model that works on ``context`` through code.

    Args:
        model: the root model: ``"local"`` (embedded, offline), ``"openai:NAME"``,
            ``"openai:NAME@http://host:port/v1"``, ``"anthropic:NAME"``, or a ``Model`` object.
        sub_model: the model behind ``llm_query``/``llm_batch``; defaults to ``model``.
        budget: the run's limits.
        sandbox: ``"process"`` (an isolated worker process), a Sandbox object, or a factory.
        concurrency: sub-calls in flight at once for one ``llm_batch``.
        choice_pack: how many small items of one ``llm_batch(..., choices=...)`` one sub-call
            may answer together (numbered, one choice per line; an item the reply misses is
            asked alone). Items of one line up to 600 characters with the same model, system
            and choices are packed. ``1`` (the default) asks each item alone: packing sends far
            fewer prompt tokens per item, but small local models label worse in packs
            (``benchmarks/results/pack-speed.md``).
        output_limit: characters of a cell's output shown to the root model (head and tail kept).
        prompt_profile: ``"concise"`` for strong models, ``"small"`` (demonstration turns) for
            small ones; ``"auto"`` picks ``"small"`` for local models.
        models: extra named models code may pick with ``llm_query(..., model=NAME)``.
        tools: functions (type hints and docstring make the schema), ``ctxfold.tools.Tool``
            objects or adapters (``WebSearch``) given to sub-LLMs only: each ``llm_query`` /
            ``llm_batch`` call may use them; the root model is told they exist, never calls them.
        tool_turns: tool calls allowed per sub-call before the sub-LLM must answer.
        extension: advanced: a :class:`ctxfold.engine.Extension` that changes what the root model
            is told and what its code can call on the host (the bench's CodeAct baseline is one).
        compact_at: when the root conversation passes this fraction of the root model's window
            (of 200,000 characters when the window is unknown), its older turns are replaced by
            notes the root model writes of them; the REPL keeps the whole conversation as
            ``history``. ``None``: never (old outputs are then only elided).
        cache: keep model replies on disk and answer repeated calls from there (``True``: the
            default file, ``$XDG_CACHE_HOME/ctxfold/responses.sqlite``; a path; or a
            :class:`ctxfold.cache.ResponseCache`). A hit is not billed, spends no budget, and
            is marked ``cache_hit`` in the trace; ``usage.*.cache_hits`` counts them.
    """

    def __init__(
        self,
        model: str | Model = "local",
        sub_model: str | Model | None = None,
        *,
        budget: Budget | None = None,
        sandbox: SandboxSpec = "process",
        concurrency: int = 16,
        choice_pack: int = 1,
        output_limit: int | None = None,
        prompt_profile: str = "auto",
        models: Mapping[str, str | Model] | None = None,
        tools: Sequence[Any] | None = None,
        tool_turns: int = DEFAULT_TURNS,
        extension: Extension | None = None,
        compact_at: float | None = 0.5,
        cache: str | os.PathLike[str] | bool | ResponseCache | None = None,
    ) -> None:
        self._cache = _response_cache(cache)
        if budget is not None and not isinstance(budget, Budget):
            raise CtxfoldError(f"budget must be a ctxfold.Budget, got {type(budget).__name__}")
        _check_count(concurrency, "concurrency")
        _check_count(choice_pack, "choice_pack")
        if prompt_profile not in (*PROFILES, "auto"):
            raise CtxfoldError(f"prompt_profile must be one of auto, {', '.join(PROFILES)}")
        if output_limit is not None and (not isinstance(output_limit, int) or output_limit < 200):
            raise CtxfoldError(f"output_limit must be a whole number >= 200, got {output_limit!r}")
        self.budget = budget or Budget()
        self._model_spec = model if isinstance(model, str) else ""
        self._sub_model_spec = sub_model if isinstance(sub_model, str) else self._model_spec
        self._owned: list[Model] = []
        self.model = self._resolve(model)
        self.sub_model = self.model if sub_model is None else self._resolve(sub_model)
        self._models = {self.model.name: self.model, self.sub_model.name: self.sub_model}
        for name, spec in (models or {}).items():
            self._models[name] = self._resolve(spec)
        warn_if_unpriced(list(self._models.values()), self.budget.usd)
        self._sandbox = sandbox
        make_sandbox(sandbox) if isinstance(sandbox, str) else None  # validate the spec early
        if compact_at is not None and (
            not isinstance(compact_at, int | float)
            or isinstance(compact_at, bool)
            or not 0 < compact_at <= 1
        ):
            raise CtxfoldError(
                f"compact_at must be a fraction in (0, 1] or None, got {compact_at!r}"
            )
        self._options = self._engine_options(
            output_limit,
            prompt_profile,
            compact_at,
            concurrency=concurrency,
            choice_pack=choice_pack,
        )
        _check_count(tool_turns, "tool_turns")
        self.tools = as_tools(tools)
        self._tool_turns = tool_turns
        if extension is not None:
            if not isinstance(extension, Extension):
                kind = type(extension).__name__
                raise CtxfoldError(f"extension must be an Extension, got {kind}")
            self._options = replace(self._options, extension=extension)
        self._spares = SparePool()  # a started sandbox worker waits here for the next run
        self._warm: weakref.finalize[[], RLM] | None = None

    def _resolve(self, spec: str | Model) -> Model:
        model = resolve_model(spec)
        if isinstance(spec, str):
            self._owned.append(model)
        return model if self._cache is None else CachedModel(model, self._cache)

    def _engine_options(
        self,
        output_limit: int | None,
        profile: str,
        compact_at: float | None,
        concurrency: int,
        choice_pack: int,
    ) -> EngineOptions:
        window = self.model.context_window
        profile = profile_for(profile, self.model.name)
        if output_limit is None:
            output_limit = 8000 if window is None else max(1000, min(8000, window // 2))
        window_chars = 200_000 if window is None else window * CHARS_PER_TOKEN
        history = max(8_000, int(window_chars * 0.6))
        return EngineOptions(
            concurrency=concurrency,
            choice_pack=choice_pack,
            output_limit=output_limit,
            prompt_profile=profile,
            history_chars=history,
            compact_chars=None if compact_at is None else int(window_chars * compact_at),
        )

    def _sandbox_factory(self) -> Callable[[], Sandbox]:
        spec = self._sandbox
        spares = self._spares
        if isinstance(spec, str) and spec.strip().lower() != "process":
            return lambda: make_sandbox(spec)
        if isinstance(spec, str):
            return lambda: ProcessSandbox(spare=spares)
        if hasattr(spec, "execute"):
            # One given object serves the top run; child runs get their own process sandbox.
            first: list[Sandbox] = [spec]  # type: ignore[list-item]
            return lambda: first.pop() if first else ProcessSandbox(spare=spares)
        return spec

    @property
    def models(self) -> Mapping[str, Model]:
        """Every model this RLM may call, by name (read-only): the root model, the sub-model
        and the extra ``models`` code may pick with ``llm_query(..., model=NAME)``."""
        return MappingProxyType(self._models)

    def run(
        self,
        question: str,
        context: Any = None,
        *,
        contexts: Sequence[Any] | None = None,
        trace: str | os.PathLike[str] | Trace | None = None,
        schema: Any = None,
        budget: Budget | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Answer ``question`` about ``context`` (str, bytes, a file or folder Path, list, dict).

        Several inputs go in ``contexts=[...]`` and become ``context_0 ... context_N``.
        ``trace`` is a path to stream the run's events to as JSONL while it runs, or a
        :class:`Trace` (e.g. one with subscribed listeners) to record into. ``schema`` (a
        pydantic model class, a plain type such as ``int`` or ``list[str]``, or a JSON-schema
        dict) asks for a typed answer: ``result.value`` holds it, checked. ``budget`` replaces
        the RLM's budget for this run. Setting ``cancel`` (from any thread) stops the run: no
        new sub-call or turn starts, and it ends with ``stop_reason="cancelled"``.
        """
        if not isinstance(question, str) or not question.strip():
            raise CtxfoldError("question must be a non-empty string")
        if budget is not None and not isinstance(budget, Budget):
            raise CtxfoldError(f"budget must be a ctxfold.Budget, got {type(budget).__name__}")
        checked = AnswerSchema.of(schema) if schema is not None else None
        run_budget = budget or self.budget
        run_trace = trace if isinstance(trace, Trace) else Trace(trace)
        # With a trace file, in-memory inputs are kept beside it until the run ends, so that
        # a run whose host dies can be resumed from the trace.
        keep = None if trace is None or isinstance(trace, Trace) else Path(f"{trace}.inputs")
        try:
            with _inputs_dir(keep) as workdir:
                prepared = prepare_contexts(context, contexts, workdir=workdir)
                start = RunStart(
                    run_id=uuid.uuid4().hex,
                    question=question,
                    model=self.model.name,
                    sub_model=self.sub_model.name,
                    budget=asdict(run_budget),
                    contexts=[c.description for c in prepared],
                    version=__version__,
                    model_spec=self._model_spec,
                    sub_model_spec=self._sub_model_spec,
                    inputs=[{**c.spec, "shape": c.shape, "preview": c.preview} for c in prepared],
                    schema=checked.json_schema if checked is not None else None,
                )
                result = self._drive(
                    question,
                    prepared,
                    run_trace,
                    start,
                    schema=checked,
                    budget=run_budget,
                    cancel=cancel,
                )
            if keep is not None:
                shutil.rmtree(keep, ignore_errors=True)
            return result
        finally:
            run_trace.close()

    def _drive(
        self,
        question: str,
        prepared: list[PreparedContext],
        run_trace: Trace,
        first: RunStart | RunResume,
        replay: ResumeState | None = None,
        *,
        schema: AnswerSchema | None = None,
        budget: Budget | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Run the top engine (fresh, or replaying a killed run) and wrap up its result."""
        self._keep_warm()
        factory = self._sandbox_factory()
        unused: list[Sandbox] = []
        try:
            # The top run's sandbox is made now so that RunStart can name its isolation level.
            unused.append(factory())
            shared = RunShared(
                root_model=self.model,
                sub_model=self.sub_model,
                models=self._models,
                budget=budget or self.budget,
                options=self._options,
                make_sandbox=lambda: unused.pop() if unused else factory(),
                trace=run_trace,
                tools=self.tools,
                tool_turns=self._tool_turns,
            )
            if cancel is not None:
                shared.cancelled = cancel
            if isinstance(first, RunStart):
                first = replace(first, isolation=str(getattr(unused[0], "isolation", "")))
            shared.emit(first)
            if replay is not None:
                replay.restore_meters(shared)
            try:
                outcome = Engine(shared).run(question, prepared, replay, schema=schema)
            except BaseException:
                shared.cancelled.set()
                shared.end_run("", False, "interrupted", seconds=run_trace.elapsed())
                raise
            return finish_run(shared, outcome, prepared, run_trace.elapsed)
        finally:
            for sandbox in unused:  # made, but the run ended before it started
                sandbox.close()

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike[str],
        *,
        model: str | Model | None = None,
        sub_model: str | Model | None = None,
        budget: Budget | None = None,
        trust_trace: bool = False,
        **options: Any,
    ) -> Result:
        """Continue a run whose host died (``kill -9``, Ctrl-C) from its JSONL trace.

        The recorded cells are replayed in a fresh sandbox with their recorded sub-call answers
        (no new model calls for what was answered), then the run goes on from the last completed
        turn, appending to the same trace. The models default to the specs the trace recorded;
        pass ``model=`` when the run used a model object. A recorded spec that points to another
        endpoint than your configuration (``openai:NAME@http://elsewhere/v1``) would receive
        your API key: it raises :class:`~ctxfold.UntrustedSpecError` unless you pass the model
        yourself or ``trust_trace=True``. A malformed trace raises :class:`CtxfoldError`.
        """
        trace, state, prepared, rlm = cls._reopened(
            path, model, sub_model, budget, trust_trace, options
        )
        start = state.start
        try:
            with rlm:
                if start.session:  # a session's question: its earlier questions are replayed
                    with rlm._resumed_session(state, prepared, trace, path, budget) as session:
                        assert session.resumed is not None
                        return session.resumed
                schema = AnswerSchema.of(start.schema) if start.schema is not None else None
                result = rlm._drive(
                    start.question,
                    prepared,
                    trace,
                    RunResume(turns=len(state.turns)),
                    state,
                    schema=schema,
                )
            shutil.rmtree(f"{path}.inputs", ignore_errors=True)
            return result
        finally:
            trace.close()

    @classmethod
    def resume_session(
        cls,
        path: str | os.PathLike[str],
        *,
        model: str | Model | None = None,
        sub_model: str | Model | None = None,
        budget: Budget | None = None,
        trust_trace: bool = False,
        **options: Any,
    ) -> Session:
        """Continue a session whose host died, from its trace (see :meth:`resume`): the
        finished questions' cells run again with their recorded sub-call answers, so the REPL
        holds what it held; the interrupted question is finished (``session.resumed`` is its
        result); the session stays open for more questions, appending to the same trace. It
        owns the RLM made for it: closing the session closes that too."""
        trace, state, prepared, rlm = cls._reopened(
            path, model, sub_model, budget, trust_trace, options, session=True
        )
        try:
            return rlm._resumed_session(state, prepared, trace, path, budget, owner=rlm)
        except BaseException:
            rlm.close()
            raise

    @classmethod
    def _reopened(
        cls,
        path: str | os.PathLike[str],
        model: str | Model | None,
        sub_model: str | Model | None,
        budget: Budget | None,
        trust_trace: bool,
        options: dict[str, Any],
        *,
        session: bool = False,
    ) -> tuple[Trace, ResumeState, list[PreparedContext], RLM]:
        """The trace at ``path`` reopened for appending, what it recorded, its inputs (checked
        before any model is made) and an RLM for its models; the trace is closed again when any
        of it fails. With ``session``, a trace of a single run is refused."""
        trace = Trace.reopen(path)
        try:
            state = load_resume_state(trace)
            if session and not state.start.session:
                raise CtxfoldError("that trace is of a single run, not a session: use resume()")
            prepared = _recorded_inputs(state.start)
            rlm = cls._for_trace(state.start, model, sub_model, budget, trust_trace, options)
        except BaseException:
            trace.close()
            raise
        return trace, state, prepared, rlm

    @classmethod
    def _for_trace(
        cls,
        start: RunStart,
        model: str | Model | None,
        sub_model: str | Model | None,
        budget: Budget | None,
        trust_trace: bool,
        options: dict[str, Any],
    ) -> RLM:
        root = _trusted_spec(start.model_spec, model, "model", trust_trace)
        sub = sub_model
        if sub is None and start.sub_model_spec:
            sub = _trusted_spec(start.sub_model_spec, None, "sub_model", trust_trace)
        return cls(root, sub, budget=budget or budget_from_dict(start.budget), **options)

    def _resumed_session(
        self,
        state: ResumeState,
        prepared: list[PreparedContext],
        trace: Trace,
        path: str | os.PathLike[str],
        budget: Budget | None,
        owner: RLM | None = None,
    ) -> Session:
        workdir = Path(f"{path}.inputs")

        def closed() -> None:
            shutil.rmtree(workdir, ignore_errors=True)
            if owner is not None:
                owner.close()

        self._keep_warm()
        session = Session(
            self._session_parts(),
            inputs=prepared,
            workdir=workdir,
            trace=trace,
            on_close=closed,
            session_id=state.start.session,
        )
        try:
            session.resume(state, budget)
        except BaseException:
            session.close()
            raise
        return session

    def session(
        self,
        context: Any = None,
        *,
        contexts: Sequence[Any] | None = None,
        trace: str | os.PathLike[str] | Trace | None = None,
        session_budget: Budget | None = None,
    ) -> Session:
        """Start a conversation about ``context`` (or ``contexts=[...]``): one sandbox loads
        the inputs once and keeps its variables from question to question.

        ``session.ask(question)`` answers in turn; ``session.close()`` (or ``with``) ends it.
        Each question has this RLM's budget (or the one given to ``ask``), capped by what is
        left of ``session_budget``. ``trace``: a path to stream every question's events to.
        """
        self._keep_warm()
        session_trace = trace if isinstance(trace, Trace) else Trace(trace)
        keep = None if trace is None or isinstance(trace, Trace) else Path(f"{trace}.inputs")
        workdir = keep or Path(tempfile.mkdtemp(prefix="ctxfold-in-", dir=host_temp_dir()))
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            return Session(
                self._session_parts(),
                inputs=prepare_contexts(context, contexts, workdir=workdir),
                workdir=workdir,
                trace=session_trace,
                session_budget=session_budget,
                on_close=lambda: remove_soon(str(workdir)),
            )
        except BaseException:
            session_trace.close()
            remove_soon(str(workdir))
            raise

    def _session_parts(self) -> SessionParts:
        return SessionParts(
            root_model=self.model,
            sub_model=self.sub_model,
            models=self._models,
            budget=self.budget,
            options=self._options,
            make_sandbox=self._sandbox_factory(),
            tools=self.tools,
            tool_turns=self._tool_turns,
            version=__version__,
            model_spec=self._model_spec,
            sub_model_spec=self._sub_model_spec,
        )

    async def arun(
        self,
        question: str,
        context: Any = None,
        *,
        contexts: Sequence[Any] | None = None,
        trace: str | os.PathLike[str] | Trace | None = None,
        schema: Any = None,
        budget: Budget | None = None,
    ) -> Result:
        """Like :meth:`run`, for asyncio code (the run happens in a worker thread).

        Cancelling the awaiting task cancels the run; the cancellation is raised once the run
        has stopped and closed its sandbox.
        """
        cancel = threading.Event()
        run = asyncio.ensure_future(
            in_thread(
                functools.partial(
                    self.run,
                    question,
                    context,
                    contexts=contexts,
                    trace=trace,
                    schema=schema,
                    budget=budget,
                    cancel=cancel,
                )
            )
        )
        try:
            return await asyncio.shield(run)
        except asyncio.CancelledError:
            cancel.set()
            with contextlib.suppress(Exception):
                await run
            raise

    def _keep_warm(self) -> None:
        """From the first run until :meth:`close` (or until this object is collected), a started
        sandbox worker waits for the next run (see ``ctxfold.sandbox.SparePool``)."""
        if self._warm is None or not self._warm.alive:
            self._warm = weakref.finalize(self, self._spares.hold().close)

    def close(self) -> None:
        """Release the model clients this RLM created (e.g. stop the local model server) and
        the spare sandbox worker it kept for its next run."""
        if self._warm is not None:
            self._warm()
        for model in self._owned:
            model.close()
        self._owned.clear()

    def __enter__(self) -> RLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
