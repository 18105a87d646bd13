"""Bench methods that read the input through search tools (issue 6's comparison).

- ``rlm_tools``: an RLM whose sub-LLMs get ``search``/``read``/``grep`` over the input, which is
  written out as a corpus (the root delegates; tools stay with sub-LLMs).
- ``agent_bm25``: the root model itself with those tools in a bounded tool loop: no REPL, no
  sub-calls. It stands where the paper's "CodeAct + BM25" baseline stands, without code
  execution, and is named for what it is.
- ``codeact_bm25``: the paper's CodeAct + BM25 baseline: the root model writes code in the REPL
  (``context`` loaded, as in an RLM) and that code calls ``search``/``read``/``grep`` as Python
  functions; no sub-LLM calls (see :mod:`ctxfold.bench.codeact`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ctxfold.bench._types import Instance
from ctxfold.bench.codeact import CodeActTools
from ctxfold.bench.methods import MethodResult, rlm_result
from ctxfold.budget import Budget
from ctxfold.models import Message, Model, TokenUsage
from ctxfold.rlm import RLM
from ctxfold.tools import corpus_tools, run_tool_loop

_CHUNK_CHARS = 2000


def _documents(context: Any) -> dict[str, str]:
    """The input as documents: a dict as is, list items one each, text in fixed-size chunks."""
    if isinstance(context, dict):
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in context.items()}
    if isinstance(context, list):
        return {
            f"item-{i:05d}": v if isinstance(v, str) else json.dumps(v)
            for i, v in enumerate(context)
        }
    text = str(context)
    return {
        f"chunk-{i // _CHUNK_CHARS:05d}": text[i : i + _CHUNK_CHARS]
        for i in range(0, len(text), _CHUNK_CHARS)
    }


def _write_corpus(context: Any, folder: Path) -> Path:
    path = folder / "corpus.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for doc_id, text in _documents(context).items():
            fh.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    return path


def rlm_tools(instance: Instance, root: Model, sub: Model, max_iterations: int) -> MethodResult:
    """An RLM whose sub-LLMs can search and read the input as a corpus."""
    with tempfile.TemporaryDirectory(prefix="ctxfold-corpus-") as folder:
        tools = corpus_tools(_write_corpus(instance.context, Path(folder)), cache_dir=folder)
        rlm = RLM(model=root, sub_model=sub, budget=Budget(iterations=max_iterations), tools=tools)
        return rlm_result(rlm.run(instance.question, instance.context))


def agent_bm25(instance: Instance, root: Model, sub: Model, max_iterations: int) -> MethodResult:
    """The root model with search/read/grep over the input as its own tools; no REPL."""
    usage: list[TokenUsage] = []

    def complete(convo: list[Message]) -> Any:
        completion = root.complete(convo)
        usage.append(completion.usage)
        return completion

    question: Message = {
        "role": "user",
        "content": f"Use the tools to search the documents, then answer.\n"
        f"Question: {instance.question}",
    }
    with tempfile.TemporaryDirectory(prefix="ctxfold-corpus-") as folder:
        tools = corpus_tools(_write_corpus(instance.context, Path(folder)), cache_dir=folder)
        final = run_tool_loop(
            complete, [question], tools, max_turns=max_iterations, model=root, account=usage.append
        )
    return MethodResult(
        answer=final.text,
        root_input_tokens=sum(u.input_tokens for u in usage),
        root_output_tokens=sum(u.output_tokens for u in usage),
        cost_usd=sum(u.cost_usd or 0.0 for u in usage),
        iterations=len(usage),
    )


def codeact_bm25(instance: Instance, root: Model, sub: Model, max_iterations: int) -> MethodResult:
    """The root model with a REPL over the input whose code can call search/read/grep; no
    sub-LLMs."""
    with tempfile.TemporaryDirectory(prefix="ctxfold-corpus-") as folder:
        tools = corpus_tools(_write_corpus(instance.context, Path(folder)), cache_dir=folder)
        budget = Budget(iterations=max_iterations, depth=0)
        rlm = RLM(root, root, budget=budget, extension=CodeActTools(tools))
        return rlm_result(rlm.run(instance.question, instance.context))
