"""The ``verifiers`` environment (``ctxfold-rl``), driven by the library's own evaluation entry
point (``vf-eval``) against the fake OpenAI server. ``verifiers`` pins ``mcp==2.0.0`` and
``openai<3``, which the serve extra does not allow, so it lives in its own virtual environment,
``.venv-rl``, that ``make test`` builds."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ctxfold.bench.tasks import get_task
from ctxfold.testing.fake_openai import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
VF_EVAL = ROOT / ".venv-rl" / "bin" / "vf-eval"
pytestmark = pytest.mark.skipif(
    not VF_EVAL.exists(), reason="the environment .venv-rl is missing (make test builds it)"
)

_SOLVER = """```python
import re
key = question.split(" for ")[1].split(" mentioned")[0]
found = re.search("for " + re.escape(key) + r" is: (\\S+?)\\.?(\\s|$)", context)
print(found.group(1))
answer["content"] = found.group(1)
answer["ready"] = True
```"""
_WRONG = """```python
print(len(context))
answer["content"] = "0000000"
answer["ready"] = True
```"""


def _vf_eval(base_url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [str(VF_EVAL), "ctxfold-rl", "-m", "fake-policy", "--client.base-url", base_url]
    command += ["--client.api-key-var", "FAKE_KEY", "--no-push", "-o", str(out)]
    command += ["--env.agent.runtime.type", "subprocess", *extra]
    env = dict(os.environ, FAKE_KEY="secret-of-the-test")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _traces(out: Path) -> list[dict[str, Any]]:
    episodes = [json.loads(line) for path in out.glob("*/traces.jsonl") for line in path.open()]
    return [trace for episode in episodes for trace in episode["traces"]]


def test_vf_eval_rolls_rlms_out_on_ctxfold_tasks_and_rewards_them(tmp_path: Path) -> None:
    instances = get_task("sniah").generate(n=2, length=3000, seed=5)
    wrong_key = instances[1].question.split(" for ")[1].split(" mentioned")[0]

    def policy(messages: list[dict[str, Any]]) -> str:
        task = next(m["content"] for m in messages if "mentioned in the" in m["content"])
        return _WRONG if wrong_key in task else _SOLVER

    with FakeOpenAIServer(policy) as fake:
        args = ["-n", "2", "-r", "1", "--env.taskset.lengths", "[3000]"]
        args += ["--env.agent.harness.id", "ctxfold-rl", "--env.agent.harness.max-iterations", "3"]
        args += ["--env.taskset.n", "2", "--env.taskset.seed", "5"]
        done = _vf_eval(fake.base_url, tmp_path, *args)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [config] = tmp_path.glob("*/configs/resolved/eval.json")
    harness = json.loads(config.read_text())["env"]["agent"]["harness"]
    assert (harness["id"], harness["max_iterations"], harness["sub_model"]) == (
        "ctxfold-rl",
        3,
        None,
    )
    traces = {t["task"]["data"]["name"]: t for t in _traces(tmp_path)}
    assert set(traces) == {instance.id for instance in instances}
    right, wrong = (traces[instance.id] for instance in instances)
    assert right["root_reply"] == instances[0].gold
    assert right["rewards"]["correct"]["score"] == 1.0
    assert wrong["root_reply"] == "0000000"
    assert wrong["rewards"]["correct"]["score"] == 0.0
    assert right["info"]["ctxfold"]["stop_reason"] == "ready"
    # Every policy call went through verifiers' interception (the trace holds the root's
    # conversation, the question included) with the rollout's own secret, not the user's key.
    assert any(instances[0].question in str(node["message"]["content"]) for node in right["nodes"])
    assert all(r["model"] == "fake-policy" for r in fake.requests)
    assert "secret-of-the-test" not in json.dumps([right, wrong])


def test_an_unknown_task_fails_with_a_message_naming_it(tmp_path: Path) -> None:
    with FakeOpenAIServer(_SOLVER) as fake:
        done = _vf_eval(fake.base_url, tmp_path, "--env.taskset.tasks", '["no-such-task"]')
        assert fake.requests == []
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "unknown task 'no-such-task'; known tasks: codeqa" in re.sub(r"[\s│]+", " ", output)
    assert "Traceback" not in output
