"""The LLM layer: providers, a model router with fallback and breakers, budgets, a cache.

Every provider and the :class:`ModelRouter` offer the same calls (:class:`LLM`):
``chat`` (optionally with ``response_format=SomeStruct`` for a typed ``.parsed``),
``stream`` (an async iterator of deltas) and ``run_tools`` (the tool-calling loop).
Importing this package does not import ``openai``; :class:`OpenAIProvider` does on first use.
"""

from __future__ import annotations

from engine.errors import (
    AllProvidersFailed,
    BudgetExceeded,
    LLMError,
    MaxStepsExceeded,
    PriceUnknown,
    ProviderError,
    ScriptError,
    StructuredOutputError,
)
from engine.llm.accounting import Attribution, Totals, UsageLedger, attribution
from engine.llm.base import (
    LLM,
    ChatResult,
    Message,
    StreamDelta,
    ToolCallDelta,
    ToolCallRequest,
    Usage,
)
from engine.llm.breaker import BreakerPolicy, CircuitBreaker
from engine.llm.budget import Budget, Reservation
from engine.llm.cache import LLMCache
from engine.llm.limits import Limits
from engine.llm.openai import OpenAIProvider
from engine.llm.prices import DEFAULT_PRICES, PRICES_DATE, Price, PriceTable
from engine.llm.provider import Provider
from engine.llm.retry import RetryPolicy
from engine.llm.router import ModelRouter
from engine.llm.scripted import Reply, Rule, ScriptedCall, ScriptedProvider
from engine.llm.stream import ChatStream

__all__ = [
    "DEFAULT_PRICES",
    "LLM",
    "PRICES_DATE",
    "AllProvidersFailed",
    "Attribution",
    "BreakerPolicy",
    "Budget",
    "BudgetExceeded",
    "ChatResult",
    "ChatStream",
    "CircuitBreaker",
    "LLMCache",
    "LLMError",
    "Limits",
    "MaxStepsExceeded",
    "Message",
    "ModelRouter",
    "OpenAIProvider",
    "Price",
    "PriceTable",
    "PriceUnknown",
    "Provider",
    "ProviderError",
    "Reply",
    "Reservation",
    "RetryPolicy",
    "Rule",
    "ScriptError",
    "ScriptedCall",
    "ScriptedProvider",
    "StreamDelta",
    "StructuredOutputError",
    "ToolCallDelta",
    "ToolCallRequest",
    "Totals",
    "Usage",
    "UsageLedger",
    "attribution",
]
