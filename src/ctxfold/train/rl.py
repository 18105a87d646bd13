"""ctxfold as a reinforcement-learning environment of ``verifiers`` (the v1 API, 0.4 and later),
so its evaluation entry point and prime-rl roll RLMs out on ctxfold's generated tasks.

The environment is a taskset and a harness, the pair ``verifiers`` composes:

- :class:`CtxfoldTaskset`: generated bench instances (``ctxfold bench --list`` names the tasks),
  one task per instance, rewarded with the bench's own scorer.
- :class:`CtxfoldHarness`: an RLM whose root model (and, unless ``sub_model`` names another, its
  sub-calls) is the policy behind the rollout's endpoint; the model's code runs in ctxfold's
  sandbox, as in any run. The RLM's answer is the trace's reply (``trace.root_reply``).

Evaluate with ``vf-eval ctxfold.train.rl -m MODEL --client.base-url URL/v1`` (the id is this
module; knobs under ``--env.taskset.*`` and ``--env.agent.harness.*``). ``verifiers`` pins
``mcp==2.0.0`` and ``openai<3``, which the ``serve`` extra does not allow: install it in its own
environment (``pip install verifiers 'ctxfold[bench]'``). The training side (prime-rl) is set
up as its documentation says, naming this environment.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import verifiers.v1 as vf
from pydantic import Field, NonNegativeInt, PositiveInt, field_validator

from ctxfold.bench import Instance
from ctxfold.bench.tasks import get_task
from ctxfold.budget import Budget
from ctxfold.errors import CtxfoldError
from ctxfold.models import WithOptions
from ctxfold.models.openai_compat import OpenAIModel
from ctxfold.rlm import RLM

__all__ = ["CtxfoldData", "CtxfoldHarness", "CtxfoldTask", "CtxfoldTaskset"]


class CtxfoldData(vf.TaskData):  # type: ignore[misc]
    """One bench instance, named by how to generate it again (a trace keeps these few fields,
    not the input): ``instance`` of ``generate(n=n, length=length, seed=seed)`` of ``task``."""

    task: str
    length: int
    seed: int
    n: int
    instance: int


class CtxfoldTask(vf.Task[CtxfoldData]):  # type: ignore[misc]
    """A bench instance, rewarded by the bench's scorer on the RLM's answer (0 to 1)."""

    @vf.reward(weight=1.0)  # type: ignore[untyped-decorator]
    async def correct(self, trace: vf.Trace) -> float:
        """The bench score of the trace's reply."""
        return float(get_task(self.data.task).score(instance_of(self.data), trace.last_reply))


class CtxfoldTasksetConfig(vf.TasksetConfig):  # type: ignore[misc]
    """Which instances: ``n`` per task and length, generated with ``seed``."""

    tasks: list[str] = Field(default_factory=lambda: ["sniah"])
    lengths: list[PositiveInt] = Field(default_factory=lambda: [16_000])
    n: PositiveInt = 4
    seed: int = 0

    @field_validator("tasks")
    @classmethod
    def _known(cls, tasks: list[str]) -> list[str]:
        for name in tasks:
            try:
                get_task(name)
            except CtxfoldError as exc:  # pydantic reports a ValueError as a config error
                raise ValueError(str(exc)) from None
        return tasks


class CtxfoldTaskset(vf.Taskset[CtxfoldTask, CtxfoldTasksetConfig]):  # type: ignore[misc]
    """ctxfold's generated long-context tasks; the prompt is the question, the input stays with
    the harness (it is made again from the task's fields)."""

    def load(self) -> list[CtxfoldTask]:
        config = self.config
        rows = []
        for name, length in itertools.product(config.tasks, config.lengths):
            for index, instance in enumerate(_generated(name, config.n, length, config.seed)):
                data = CtxfoldData(
                    task=name,
                    length=length,
                    seed=config.seed,
                    n=config.n,
                    instance=index,
                    id=instance.id,
                    name=instance.id,
                    prompt=instance.question,
                )
                rows.append(CtxfoldTask(data, config.task))
        return rows


class CtxfoldHarnessConfig(vf.HarnessConfig):  # type: ignore[misc]
    """The RLM around the policy: its sub-model (``None``: the policy itself, through the same
    endpoint; else a ctxfold model spec such as ``local``), turns, recursion depth, sandbox and
    prompt profile."""

    sub_model: str | None = None
    max_iterations: PositiveInt = 8
    depth: NonNegativeInt = 1
    sandbox: str = "process"
    prompt_profile: str = "auto"


class CtxfoldHarness(vf.Harness[CtxfoldHarnessConfig]):  # type: ignore[misc]
    """An RLM run in the environment's process; every call of the policy goes through the
    rollout's endpoint, so the trace records it. Model-written code runs in ctxfold's sandbox,
    not in a ``verifiers`` runtime."""

    NEEDS_CONTAINER = False
    EXECUTES_CODE = True

    async def launch(
        self,
        ctx: vf.ModelContext,
        trace: vf.Trace,
        runtime: vf.Runtime,
        endpoint: str,
        secret: str,
        mcp_urls: dict[str, str],
        data: vf.TaskData,
        **_: Any,
    ) -> vf.ProgramResult:
        if not isinstance(data, CtxfoldData):
            data = CtxfoldData.model_validate(data.model_dump())
        instance = instance_of(data)
        config = self.config
        policy = OpenAIModel(ctx.model, base_url=endpoint, api_key=secret)
        options = _sampling(ctx.sampling)
        root = WithOptions(policy, **options) if options else policy
        rlm = RLM(
            root,
            config.sub_model or root,
            budget=Budget(iterations=config.max_iterations, depth=config.depth),
            sandbox=config.sandbox,
            prompt_profile=config.prompt_profile,
        )
        try:
            result = await rlm.arun(instance.question, instance.context)
        finally:
            rlm.close()
            policy.close()
        trace.root_reply = result.answer
        trace.info["ctxfold"] = {
            "stop_reason": result.stop_reason,
            "iterations": result.iterations,
            "sub_calls": result.usage.sub.calls,
        }
        return vf.ProgramResult(exit_code=0, stdout=result.answer, stderr="")


def instance_of(data: CtxfoldData) -> Instance:
    """The bench instance a task names (generated once per process for each set of fields)."""
    instances = _generated(data.task, data.n, data.length, data.seed)
    if not 0 <= data.instance < len(instances):
        raise CtxfoldError(f"{data.task} has no instance {data.instance} of {len(instances)}")
    return instances[data.instance]


@functools.lru_cache(maxsize=64)
def _generated(task: str, n: int, length: int, seed: int) -> tuple[Instance, ...]:
    return tuple(get_task(task).generate(n=n, length=length, seed=seed))


def _sampling(sampling: Any) -> dict[str, Any]:
    """The rollout's sampling settings that ctxfold's OpenAI client passes on."""
    names = ("temperature", "top_p", "max_tokens")
    values = {name: getattr(sampling, name, None) for name in names}
    return {name: value for name, value in values.items() if value is not None}
