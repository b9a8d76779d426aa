"""Model prices: US dollars per 1M input and output tokens, per model, user-overridable.

:data:`DEFAULT_PRICES` are OpenAI's published list prices as of :data:`PRICES_DATE`; they
change, so pass your own (``PriceTable({"my-model": Price(0.2, 0.8)})``) where it matters.
A model name matches its own entry or the longest entry it starts with
(``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final, NamedTuple

from engine.llm.base import Usage

__all__ = ["DEFAULT_PRICES", "PRICES_DATE", "Price", "PriceTable"]


class Price(NamedTuple):
    """Dollars per 1M tokens: ``input`` (prompt) and ``output`` (completion)."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


#: When :data:`DEFAULT_PRICES` were last checked against the published list prices.
PRICES_DATE: Final = "2025-08"

DEFAULT_PRICES: Final[Mapping[str, Price]] = {
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "o3": Price(2.00, 8.00),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "o1": Price(15.00, 60.00),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
}


class PriceTable:
    """Prices by model: the defaults, overridden (or extended) by ``prices``.

    ``defaults=False`` starts from an empty table (only what you pass is priced).
    """

    def __init__(
        self,
        prices: Mapping[str, Price | tuple[float, float]] | None = None,
        *,
        defaults: bool = True,
    ) -> None:
        table: dict[str, Price] = dict(DEFAULT_PRICES) if defaults else {}
        for model, p in (prices or {}).items():
            table[model] = _check(model, p)
        self._table = table
        self._memo: dict[str, Price | None] = {}
        self._prefixes = sorted(table, key=len, reverse=True)

    def get(self, model: str) -> Price | None:
        """The price of ``model`` (exact name, else the longest matching prefix), or None."""
        try:
            return self._memo[model]
        except KeyError:
            pass
        price = self._table.get(model)
        if price is None:
            price = next((self._table[p] for p in self._prefixes if model.startswith(p)), None)
        if len(self._memo) < 4096:  # bounded: model names come from configuration
            self._memo[model] = price
        return price

    def cost(self, model: str, usage: Usage) -> float:
        """Dollars for ``usage`` on ``model`` (0.0 when the model has no price)."""
        price = self.get(model)
        return 0.0 if price is None else price.cost(usage.prompt_tokens, usage.completion_tokens)

    def models(self) -> Iterable[str]:
        return iter(self._table)


def _check(model: str, p: Price | tuple[float, float]) -> Price:
    try:
        price = Price(float(p[0]), float(p[1]))
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"price of {model!r} must be (input, output) per 1M tokens") from None
    if not all(math.isfinite(v) and v >= 0 for v in price):
        raise ValueError(f"price of {model!r} must be finite and >= 0, got {price}")
    return price
