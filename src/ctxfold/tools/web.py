"""An adapter for a web-search HTTP API, as a tool for sub-LLMs."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from ctxfold.errors import MissingAPIKeyError
from ctxfold.tools._tool import Tool

Parser = Callable[[Any], list[dict[str, Any]]]


class WebSearch:
    """A ``web_search(query, k)`` tool that POSTs to a search service.

    The request is ``POST endpoint`` with the JSON body ``{"query": ..., "k": ...}`` and the header
    ``Authorization: Bearer $KEY``, the key read from the environment variable ``api_key_env`` at
    call time (``None``: no key). The reply is JSON; by default ``{"results": [{"title", "url",
    "snippet"}, ...]}`` (a bare list works too). Another service's format needs a ``parse``
    function turning its JSON into that list. Pass the object itself in ``RLM(tools=[...])``.

    Args:
        endpoint: the service URL.
        api_key_env: the environment variable holding the API key, or ``None``.
        name: the tool's name.
        timeout: seconds per request (and for the tool call).
        parse: JSON reply -> list of ``{"title", "url", "snippet"}`` dicts.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        api_key_env: str | None = "CTXFOLD_SEARCH_API_KEY",
        name: str = "web_search",
        timeout: float = 20.0,
        parse: Parser | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.api_key_env = api_key_env
        self.name = name
        self.timeout = timeout
        self._parse = parse or _default_parse

    def __call__(self, query: str, k: int = 5) -> str:
        """Search the web; returns titles, URLs and snippets of the best results.

        Args:
            query: what to search for.
            k: how many results to return (at most 10).
        """
        k = max(1, min(int(k), 10))
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise MissingAPIKeyError(f"set {self.api_key_env} to use {self.name}")
            headers["Authorization"] = f"Bearer {key}"
        body = json.dumps({"query": query, "k": k}).encode()
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"search service answered HTTP {exc.code}") from None
        results = self._parse(payload)[:k]
        if not results:
            return f"No web results for {query!r}."
        return "\n".join(
            f"{rank}. {r.get('title', '')} <{r.get('url', '')}>\n   {r.get('snippet', '')}"
            for rank, r in enumerate(results, 1)
        )

    def as_tool(self) -> Tool:
        """This adapter as a :class:`Tool`."""
        return Tool.from_function(self.__call__, name=self.name, timeout=self.timeout + 5)


def _default_parse(payload: Any) -> list[dict[str, Any]]:
    items = payload.get("results", []) if isinstance(payload, dict) else payload
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
