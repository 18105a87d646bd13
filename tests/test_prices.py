"""Prices from the maintained table: cost_usd and Budget.usd for known models, a warning else."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

import ctxfold
from ctxfold.models import ScriptedModel, TokenUsage, table_price
from ctxfold.testing.fake_openai import FakeOpenAIServer


def _loop(messages: list[dict[str, Any]]) -> str:
    return "```python\nprint(llm_query('sub ' + str(len(context))))\n```"


def test_the_table_prices_cached_input_at_the_cached_price() -> None:
    plain = table_price("gpt-5-mini", "openai", TokenUsage(1_000_000, 0))
    cached = table_price("gpt-5-mini", "openai", TokenUsage(1_000_000, 0, cached_tokens=800_000))
    assert plain is not None and cached is not None and 0 < cached < plain
    assert table_price("claude-sonnet-4-5", "anthropic", TokenUsage(1000, 1000)) is not None
    assert table_price("no-such-model", "openai", TokenUsage(10, 10)) is None


def test_a_known_model_is_priced_and_its_usd_budget_holds() -> None:
    with FakeOpenAIServer(_loop) as fake:
        model = f"openai:gpt-5-mini@{fake.base_url}"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a known price: no warning
            rlm = ctxfold.RLM(model, budget=ctxfold.Budget(usd=0.0005, iterations=50))
        with rlm:
            result = rlm.run("q", "x" * 2000)
    usage = result.usage
    assert usage.root.cost_usd > 0 and usage.sub.cost_usd > 0
    expected = table_price(
        "gpt-5-mini", "openai", TokenUsage(usage.root.input_tokens, usage.root.output_tokens)
    )
    assert usage.root.cost_usd == pytest.approx(expected)
    assert result.stop_reason == "usd" and result.iterations < 50


def test_a_usd_budget_on_an_unpriced_model_warns_once() -> None:
    with pytest.warns(UserWarning, match="cannot be enforced: no price is known for scripted"):
        ctxfold.RLM(ScriptedModel(["x"], name="scripted"), budget=ctxfold.Budget(usd=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctxfold.RLM(ScriptedModel(["x"], name="scripted"))  # no USD budget: nothing to say


def test_an_unknown_model_is_looked_up_in_the_table_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import genai_prices

    from ctxfold.models._prices import table_knows

    calls = []
    real = genai_prices.calc_price

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(args[1])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(genai_prices, "calc_price", counted)
    table_knows.cache_clear()
    for _ in range(3):  # each call of a run asks for its price
        assert table_price("no-such-model-xyz", "openai", TokenUsage(10, 10)) is None
    assert calls == ["no-such-model-xyz"]
    known = [table_price("gpt-4o-mini", "openai", TokenUsage(1000, 1000)) for _ in range(2)]
    assert known[0] is not None and known[0] == known[1] > 0
