"""Prices of hosted models from a maintained table (``genai-prices``, read from its bundled
snapshot: no network), so that ``cost_usd`` and ``Budget.usd`` work out of the box."""

from __future__ import annotations

import functools
import math
import warnings

from ctxfold.models._base import Model, TokenUsage


def table_price(model: str, provider: str, usage: TokenUsage) -> float | None:
    """What ``usage`` of ``model`` at ``provider`` (``"openai"``, ``"anthropic"``) costs in
    dollars, cached input tokens at the provider's cached price; ``None`` if not in the table."""
    # The table remembers the models it found, not the ones it did not: looking an unknown one
    # up again on every call cost about 0.5 ms a call.
    return _price(model, provider, usage) if table_knows(model, provider) else None


def _price(model: str, provider: str, usage: TokenUsage) -> float | None:
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # pragma: no cover - a core dependency
        return None
    priced = Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cached_tokens or None,
    )
    try:
        return float(calc_price(priced, model, provider_id=provider).total_price)
    except (LookupError, ValueError):
        return None


@functools.lru_cache(maxsize=256)
def table_knows(model: str, provider: str) -> bool:
    """Whether the table has a price for ``model`` at ``provider``."""
    return _price(model, provider, TokenUsage(1, 1)) is not None


def warn_if_unpriced(models: list[Model], usd: float | None) -> None:
    """One warning when a USD budget is set and a model's price is unknown (its calls then
    cost nothing as far as the budget can tell)."""
    if usd is None or math.isinf(usd):
        return
    unknown = sorted({m.name for m in models if getattr(m, "priced", False) is not True})
    if unknown:
        warnings.warn(
            f"Budget(usd={usd}) cannot be enforced: no price is known for "
            f"{', '.join(unknown)} (give price_per_mtok= to its model client)",
            UserWarning,
            stacklevel=3,
        )
