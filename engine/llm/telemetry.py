"""Metrics and spans of LLM calls.

One span per call through the OpenTelemetry **API** (the application's global tracer
provider, or the one passed in), named ``chat <model>`` with the GenAI semantic-convention
attributes (``gen_ai.provider.name``, ``gen_ai.request.model``, ``gen_ai.usage.*``, ...);
retries, fallbacks and breaker skips are span events. Without ``opentelemetry-api``
installed there are no spans and nothing else changes. Metrics go to the engine's
``engine_llm_*`` families. Nothing here ever sees an API key: spans and metrics are built
only from model names, counts and the typed errors' sanitised messages.

Answered calls are the hot path (an orchestrator's workers make one per subtask), so they
are tallied in plain Python slots (:class:`_Tally`) and folded into the prometheus-client
families right before each scrape, like the runtime's message counters; the rarer events
(failures, refusals, breaker and cache changes) go to prometheus-client at once.
"""

from __future__ import annotations

import bisect
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Final

from engine.errors import BudgetExceeded, ProviderError
from engine.llm.base import ChatResult
from engine.observe.metrics import Metrics, default_metrics

__all__ = ["NOOP_SPAN", "CallSpan", "Telemetry", "error_class"]

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


#: The span of a call nobody traces (every method does nothing).
NOOP_SPAN: Final = CallSpan()
_NOOP: Final = NOOP_SPAN


class _Tally:
    """Answered calls of one (provider, model, kind) not yet folded into prometheus-client.

    Only the event loop's thread adds; :meth:`_Sink.fold` (any thread, under the sink's
    lock) reads the running totals and pushes what changed since the last fold, so a fold
    racing an add only defers that add to the next scrape.
    """

    __slots__ = (
        "buckets", "cached", "children", "completion", "cost", "done", "ok", "orphan", "prompt",
        "seconds",
    )  # fmt: skip

    def __init__(self, children: tuple[Any, ...], buckets: int, orphan: bool) -> None:
        self.children = children  # (ok, cached, prompt, completion) counters, cost, histogram
        self.orphan = orphan  # not folded by the sink (past its bound): pushed at once
        self.ok = 0
        self.cached = 0
        self.prompt = 0
        self.completion = 0
        self.cost = 0.0
        self.seconds = 0.0
        self.buckets = [0] * buckets  # per bucket of the duration histogram (last: +Inf)
        # what the last fold pushed: [ok, cached, prompt, completion, cost, seconds, *buckets]
        self.done: list[float] = [0] * (6 + buckets)

    def push(self) -> None:
        """Add what changed since the last push to the prometheus children."""
        ok, cached, prompt, completion, cost, hist = self.children
        now_ = [self.ok, self.cached, self.prompt, self.completion, self.cost, self.seconds]
        now_ += self.buckets
        d = [x - y for x, y in zip(now_, self.done, strict=True)]
        self.done = now_
        for child, delta in ((ok, d[0]), (cached, d[1]), (prompt, d[2]), (completion, d[3])):
            if delta > 0:
                child.inc(delta)
        if d[4] > 0:
            cost.inc(d[4])
        if any(d[6:]):
            hist._sum.inc(d[5])
            for bucket, n in zip(hist._buckets, d[6:], strict=True):
                if n:
                    bucket.inc(n)


class _Sink:
    """The answered-call tallies of one :class:`Metrics` (shared by every LLM reporting
    there), folded into its families by a hook that runs before each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        # The families, not the Metrics object: _sinks is keyed weakly by the latter.
        self.calls = metrics.llm_calls
        self.duration = metrics.llm_duration
        self.tokens = metrics.llm_tokens
        self.cost = metrics.llm_cost
        #: the duration histogram's upper bounds (None: fold unsupported, observe at once)
        self.bounds: list[float] | None = None
        self.tallies: dict[tuple[str, str, str], _Tally] = {}
        self.lock = threading.Lock()
        metrics.on_collect(self.fold)
        # The router's retries and fallbacks as counters too (not only span events), so a
        # dashboard reads them without OpenTelemetry. Registered here, once per registry.
        from prometheus_client import Counter

        self.retries = Counter(
            "engine_llm_retries",
            "Failed LLM attempts the router retried on the same provider.",
            ["provider"],
            registry=metrics.registry,
        )
        self.fallbacks = Counter(
            "engine_llm_fallbacks",
            "Calls the router moved on from a provider (failed or breaker open).",
            ["from"],
            registry=metrics.registry,
        )

    def tally(self, provider: str, model: str, kind: str) -> _Tally:
        key = (provider, model, kind)
        with self.lock:
            t = self.tallies.get(key)
            if t is not None:
                return t
            hist = self.duration.labels(model)
            # prometheus-client keeps a histogram child's buckets in ``_buckets``/``_sum``
            # (0.x); should that change, durations go through Histogram.observe at once.
            bounds = getattr(hist, "_upper_bounds", None)
            if bounds and hasattr(hist, "_buckets") and hasattr(hist, "_sum"):
                self.bounds = list(bounds)
            children = (
                self.calls.labels(provider, model, kind, "ok"),
                self.calls.labels(provider, model, kind, "cached"),
                self.tokens.labels(model, "prompt"),
                self.tokens.labels(model, "completion"),
                self.cost.labels(model),
                hist,
            )
            orphan = len(self.tallies) >= 4096  # label sets come from configuration
            t = _Tally(children, len(self.bounds) if self.bounds else 0, orphan)
            if not orphan:
                self.tallies[key] = t
            return t

    def fold(self) -> None:
        """Push every tally's change since the last fold into the prometheus families."""
        with self.lock:
            for t in self.tallies.values():
                t.push()


_sinks: weakref.WeakKeyDictionary[Metrics, _Sink] = weakref.WeakKeyDictionary()
_sinks_lock = threading.Lock()


def _sink(metrics: Metrics) -> _Sink:
    with _sinks_lock:
        sink = _sinks.get(metrics)
        if sink is None:
            sink = _sinks[metrics] = _Sink(metrics)
        return sink


class Telemetry:
    """Where an LLM (provider or router) reports: ``metrics`` and a tracer provider.

    ``spans=False`` turns spans off; ``tracer_provider=None`` uses the global one.
    """

    __slots__ = ("_client", "_live", "_ok", "_proxy", "_sink", "_tallies", "_tracer", "metrics")

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
        # Whether self._tracer is known to be a real (SDK) tracer; until then each call asks
        # whether the global provider was set (a ProxyTracer resolves to it once it is).
        self._live = False
        # Whether self._tracer is a ProxyTracer not resolved yet: it records nothing while
        # the global provider is unset, a check much cheaper than _resolve's.
        self._proxy = False
        if self._tracer is not None:
            from opentelemetry.trace import SpanKind

            self._client = SpanKind.CLIENT
            real = _resolve(self._tracer)
            if real is not None:
                self._tracer, self._live = real, True
            else:
                self._proxy = isinstance(self._tracer, _ProxyTracer) and hasattr(
                    _trace, "_TRACER_PROVIDER"
                )
        self._sink = _sink(self.metrics)
        # (provider, model, kind) -> its tally, this LLM's own view of the sink's
        self._tallies: dict[tuple[str, str, str], _Tally] = {}
        # labelled children of the rarer outcomes, cached: .labels() costs ~1 us per call
        self._ok: dict[tuple[str, str, str, str], Any] = {}

    @property
    def tracing(self) -> bool:
        """Whether calls get a recorded span (False while the tracer is a no-op)."""
        if self._live:
            return True
        tracer = self._tracer
        if tracer is None:
            return False
        # PERF: a proxy with no global provider set records nothing (what _resolve would
        # find after two ABC isinstance checks): ~1,000 of a ~45,000-instruction scripted
        # call (callgrind, benches/llm_call_instructions.py).
        if self._proxy and _trace._TRACER_PROVIDER is None:
            return False
        real = _resolve(tracer)
        if real is None:
            return False
        self._tracer, self._live = real, True
        return True

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
        tracer = self._tracer
        if tracer is None:
            return _NOOP
        if not self._live:
            # PERF: no tracer provider set means a no-op tracer: skip building the span's
            # attributes and its wrapper (~3.5 us of a ~12 us scripted call, measured
            # with spans=True vs spans=False over 20,000 calls).
            real = _resolve(tracer)
            if real is None:
                return _NOOP
            self._tracer = tracer = real
            self._live = True
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
        span = tracer.start_span(f"{operation} {model}", kind=self._client, attributes=attrs)
        return CallSpan(span) if span.is_recording() else _NOOP

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
        key = (result.provider, result.model, kind)
        t = self._tallies.get(key)
        if t is None:
            t = self._sink.tally(*key)
            if len(self._tallies) < 1024:
                self._tallies[key] = t
        # PERF: plain slot adds, folded into prometheus-client before each scrape: ~0.4 us
        # against ~3 us for the five labelled-child updates (4 inc, 1 observe) per call
        # (cProfile of 50,000 ScriptedProvider.chat calls, and its wall-clock twin).
        if result.cached:
            t.cached += 1
        else:
            t.ok += 1
            u = result.usage
            if u.prompt_tokens > 0:
                t.prompt += u.prompt_tokens
            if u.completion_tokens > 0:
                t.completion += u.completion_tokens
            if result.cost > 0:
                t.cost += result.cost
            bounds = self._sink.bounds
            if bounds is None:
                t.children[5].observe(seconds)
            else:
                t.seconds += seconds
                # PERF: a call faster than the first bound (every scripted one) needs no
                # bisect: ~800 instructions (benches/llm_call_instructions.py)
                i = 0 if seconds <= bounds[0] else bisect.bisect_left(bounds, seconds)
                t.buckets[i] += 1
        if t.orphan:
            t.push()

    def failed(self, provider: str, model: str, kind: str, exc: BaseException) -> None:
        """One failed attempt (retried or not)."""
        self.metrics.llm_errors.labels(provider, model, kind, error_class(exc)).inc()

    def call_failed(self, provider: str, model: str, kind: str) -> None:
        """A whole call failed (after any retries and fallbacks)."""
        self._count(provider, model, kind, "error")

    def refused(self, provider: str, model: str, kind: str) -> None:
        self._count(provider, model, kind, "refused")
        self.metrics.llm_errors.labels(provider, model, kind, "budget").inc()

    def retried(self, provider: str) -> None:
        """The router retries a failed attempt on ``provider``."""
        self._sink.retries.labels(provider).inc()

    def fell_back(self, provider: str) -> None:
        """The router moves on from ``provider`` to the next in the chain."""
        self._sink.fallbacks.labels(provider).inc()

    def cache(self, result: str) -> None:
        self.metrics.llm_cache.labels(result).inc()
        self.metrics.cache_lookup(result != "miss")

    def breaker(self, provider: str, state: str) -> None:
        self.metrics.llm_breaker.labels(provider).set(_BREAKER_STATES[state])


def _resolve(tracer: Any) -> Any:
    """The tracer spans would really come from, or None while it records nothing.

    A ``ProxyTracer`` (what ``get_tracer`` returns before the application sets a global
    provider) is a no-op until a provider is set, then stands for that provider's tracer.
    """
    if _NoOpTracer is None:  # pragma: no cover - spans are off without opentelemetry
        return None
    if isinstance(tracer, _ProxyTracer):
        if getattr(_trace, "_TRACER_PROVIDER", True) is None:  # no global provider set yet
            return None
        real = getattr(tracer, "_tracer", tracer)  # the API's own resolution of the proxy
        if isinstance(real, _NoOpTracer):
            return None
        return real
    return None if isinstance(tracer, _NoOpTracer) else tracer


_NoOpTracer: Any = None
_ProxyTracer: Any = None
_trace: Any = None  # the opentelemetry.trace module, once imported


def _tracer(provider: Any) -> Any:
    global _NoOpTracer, _ProxyTracer, _trace
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - the otel extra is not installed
        return None
    _NoOpTracer, _ProxyTracer, _trace = trace.NoOpTracer, trace.ProxyTracer, trace
    return trace.get_tracer("engine.llm", tracer_provider=provider)


def now() -> float:
    """The clock call latencies are measured with."""
    return time.perf_counter()
