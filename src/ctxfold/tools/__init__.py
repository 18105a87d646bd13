"""Tools for sub-LLMs only: the root model never calls them, it asks a sub-LLM to.

Give ``ctxfold.RLM(..., tools=[...])`` plain functions (their type hints and docstring make the
schema), :class:`Tool` objects, or adapters such as :class:`WebSearch`. Every ``llm_query`` /
``llm_batch`` sub-call of that run then runs a bounded tool loop (see :mod:`ctxfold.tools._loop`)
with a text protocol any model can follow (or the model's native tool calls where its client
has them); tools run on the host, never in the sandbox. ``arun_tool_loop`` is the loop's async
twin, for asyncio code.

    >>> rlm = ctxfold.RLM("local", tools=ctxfold.tools.corpus_tools("docs/"))
"""

from ctxfold.tools._loop import (
    DEFAULT_TURNS,
    ToolOutcome,
    arun_tool_loop,
    root_tools_note,
    run_tool,
    run_tool_loop,
)
from ctxfold.tools._schema import function_schema
from ctxfold.tools._tool import Tool, as_tools
from ctxfold.tools.builtin import CorpusTools, corpus_tools
from ctxfold.tools.search import Corpus, Hit
from ctxfold.tools.web import WebSearch

__all__ = [
    "DEFAULT_TURNS",
    "Corpus",
    "CorpusTools",
    "Hit",
    "Tool",
    "ToolOutcome",
    "WebSearch",
    "arun_tool_loop",
    "as_tools",
    "corpus_tools",
    "function_schema",
    "root_tools_note",
    "run_tool",
    "run_tool_loop",
]
