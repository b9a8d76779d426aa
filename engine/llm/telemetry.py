"""Metrics and spans of LLM calls.

One span per call through the OpenTelemetry **API** (the application's global tracer
provider, or the one passed in), named ``chat <model>`` with the GenAI semantic-convention
attributes (``gen_ai.provider.name``, ``gen_ai.request.model``, ``gen_ai.usage.*``, ...);
retries, fallbacks and breaker skips are span events. Without ``opentelemetry-api``
installed there are no spans and nothing else changes. Metrics go to the engine's
``engine_llm_*`` families. Nothing here ever sees an API key: spans and metrics are built
only from model names, counts and the typed errors' sanitised messages.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

from engine.errors import BudgetExceeded, ProviderError
from engine.llm.base import ChatResult
from engine.observe.metrics import Metrics, default_metrics

__all__ = ["CallSpan", "Telemetry", "error_class"]

_BREAKER_STATES: Final = {"closed": 0, "half_open": 1, "open": 2}
Attrs = Mapping[str, str | int | float | bool]


def error_class(exc: BaseException) -> str:
    """A short, bounded label for an error (metric label, ``error.type`` attribute)."""
    if isinstance(exc, ProviderError):
        if exc.timeout:
            return "timeout"
        if exc.status is None:
            return "connection" if exc.retryable else "malformed"
        if exc.status == 429:
            return "rate_limit"
        if exc.status >= 500:
            return "server"
        if exc.status in (401, 403):
            return "auth"
        return "bad_request" if exc.status < 500 else "server"
    if isinstance(exc, BudgetExceeded):
        return "budget"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__[:40]


class CallSpan:
    """One call's span (a no-op when spans are off)."""

    __slots__ = ("_span",)

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def event(self, name: str, attributes: Attrs | None = None) -> None:
        if self._span is not None:
            self._span.add_event(name, attributes=dict(attributes or {}))

    def finish(self, result: ChatResult, kind: str) -> None:
        s = self._span
        if s is None:
            return
        attrs: dict[str, Any] = {
            "gen_ai.provider.name": result.provider,
            "gen_ai.response.model": result.model,
            "gen_ai.usage.input_tokens": result.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": result.usage.completion_tokens,
            "engine.llm.kind": kind,
            "engine.llm.cost": result.cost,
        }
        if result.finish_reason:
            attrs["gen_ai.response.finish_reasons"] = (result.finish_reason,)
        if result.cached:
            attrs["engine.llm.cached"] = result.cached
        s.set_attributes(attrs)
        s.end()

    def fail(self, exc: BaseException) -> None:
        s = self._span
        if s is None:
            return
        from opentelemetry.trace import Status, StatusCode

        s.set_attribute("error.type", error_class(exc))
        s.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
        s.end()


_NOOP: Final = CallSpan()


class Telemetry:
    """Where an LLM (provider or router) reports: ``metrics`` and a tracer provider.

    ``spans=False`` turns spans off; ``tracer_provider=None`` uses the global one.
    """

    __slots__ = ("_by_model", "_client", "_ok", "_tracer", "metrics")

    def __init__(
        self,
        metrics: Metrics | None = None,
        tracer_provider: Any = None,
        *,
        spans: bool = True,
    ) -> None:
        self.metrics = metrics if metrics is not None else default_metrics()
        self._tracer: Any = _tracer(tracer_provider) if spans else None
        self._client: Any = None
        if self._tracer is not None:
            from opentelemetry.trace import SpanKind

            self._client = SpanKind.CLIENT
        # labelled children, cached: .labels() costs ~1 us per call
        self._ok: dict[tuple[str, str, str, str], Any] = {}
        # per model: (duration histogram, prompt tokens, completion tokens, cost) children
        self._by_model: dict[str, tuple[Any, Any, Any, Any]] = {}

    def start(
        self,
        model: str,
        *,
        provider: str = "",
        kind: str = "default",
        max_tokens: int | None = None,
        temperature: float | None = None,
        operation: str = "chat",
    ) -> CallSpan:
        if self._tracer is None:
            return _NOOP
        attrs: dict[str, str | int | float] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
        }
        if provider:
            attrs["gen_ai.provider.name"] = provider
        if max_tokens is not None:
            attrs["gen_ai.request.max_tokens"] = max_tokens
        if temperature is not None:
            attrs["gen_ai.request.temperature"] = temperature
        return CallSpan(
            self._tracer.start_span(f"{operation} {model}", kind=self._client, attributes=attrs)
        )

    def _count(self, provider: str, model: str, kind: str, status: str) -> None:
        key = (provider, model, kind, status)
        child = self._ok.get(key)
        if child is None:
            child = self.metrics.llm_calls.labels(provider, model, kind, status)
            if len(self._ok) < 4096:
                self._ok[key] = child
        child.inc()

    def ok(self, result: ChatResult, kind: str, seconds: float) -> None:
        """A call answered (by a provider, or from the cache)."""
        if result.cached:
            self._count(result.provider, result.model, kind, "cached")
            return
        self._count(result.provider, result.model, kind, "ok")
        u = result.usage
        children = self._by_model.get(result.model)
        if children is None:  # what Metrics.llm_call records, with its children kept
            m, model = self.metrics, result.model
            children = (
                m.llm_duration.labels(model),
                m.llm_tokens.labels(model, "prompt"),
                m.llm_tokens.labels(model, "completion"),
                m.llm_cost.labels(model),
            )
            if len(self._by_model) < 1024:
                self._by_model[model] = children
        duration, prompt, completion, cost = children
        duration.observe(seconds)
        if u.prompt_tokens > 0:
            prompt.inc(u.prompt_tokens)
        if u.completion_tokens > 0:
            completion.inc(u.completion_tokens)
        if result.cost > 0:
            cost.inc(result.cost)

    def failed(self, provider: str, model: str, kind: str, exc: BaseException) -> None:
        """One failed attempt (retried or not)."""
        self.metrics.llm_errors.labels(provider, model, kind, error_class(exc)).inc()

    def call_failed(self, provider: str, model: str, kind: str) -> None:
        """A whole call failed (after any retries and fallbacks)."""
        self._count(provider, model, kind, "error")

    def refused(self, provider: str, model: str, kind: str) -> None:
        self._count(provider, model, kind, "refused")
        self.metrics.llm_errors.labels(provider, model, kind, "budget").inc()

    def cache(self, result: str) -> None:
        self.metrics.llm_cache.labels(result).inc()
        self.metrics.cache_lookup(result != "miss")

    def breaker(self, provider: str, state: str) -> None:
        self.metrics.llm_breaker.labels(provider).set(_BREAKER_STATES[state])


def _tracer(provider: Any) -> Any:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - the otel extra is not installed
        return None
    return trace.get_tracer("engine.llm", tracer_provider=provider)


def now() -> float:
    """The clock call latencies are measured with."""
    return time.perf_counter()
