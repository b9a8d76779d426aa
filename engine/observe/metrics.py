"""Prometheus metrics of the engine, in the engine's own registry (never the global one).

Two kinds of recorder:

* **hot path** (one per message): the int slots of :attr:`Metrics.hot`
  (``m.hot.send += 1``), :meth:`Metrics.message` and :meth:`Metrics.message_latency` only
  add to plain Python ints / a short float list.
  Nothing touches prometheus-client until a scrape: the registry reads the ints and folds
  the pending latencies into histogram buckets when it is collected. Call them from the
  thread that owns the runtime (the event loop); a scrape from another thread is safe.
* **everything else** (tasks, LLM calls, cache, vector search, gauges): ordinary
  prometheus-client objects on :attr:`Metrics.registry`.

``Metrics.on_collect(fn)`` registers a callback run right before every scrape, so a runtime
can set gauges (queue depths, pending tasks) only when someone looks.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "LATENCY_BUCKETS",
    "TASK_BUCKETS",
    "EngineRegistry",
    "HotCounters",
    "Metrics",
    "default_metrics",
]

#: Seconds; message latency on one host is tens of microseconds, across hosts milliseconds.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Seconds; tasks and LLM calls take milliseconds to minutes.
TASK_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

# PERF: pending latencies are folded into buckets in batches of this many (or on scrape);
# a list append costs ~25 ns against ~1 us for Histogram.observe (benches/bench_observe.py).
_FLUSH_EVERY: Final = 4096


class EngineRegistry(CollectorRegistry):
    """A :class:`CollectorRegistry` that runs ``on_collect`` hooks before each collection."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self._hooks: list[Callable[[], None]] = []

    def add_hook(self, fn: Callable[[], None]) -> None:
        self._hooks.append(fn)

    def collect(self) -> Iterable[Metric]:
        for fn in list(self._hooks):
            fn()
        return super().collect()


class HotCounters:
    """Message counts as plain int slots: ``hot.send += 1`` is the whole cost (~20 ns).

    The owner of a hot path (runtime, broker, node) keeps a reference and increments the
    fields inline; the registry reads them at scrape time.
    """

    __slots__ = ("cancel", "error", "publish", "reply", "send")

    def __init__(self) -> None:
        self.send = 0
        self.reply = 0
        self.error = 0
        self.publish = 0
        self.cancel = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class _HotPath(Collector):
    """Plain-int message counters and a batched latency histogram, read at scrape time."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.counters = HotCounters()
        self.messages: dict[str, int] = {}
        self.pending: list[float] = []
        self.bounds: list[float] = sorted(float(b) for b in buckets)
        self.counts: list[int] = [0] * (len(self.bounds) + 1)  # last: +Inf
        self.total = 0.0
        self.lock = threading.Lock()

    def fold(self) -> None:
        """Move pending observations into the bucket counts."""
        with self.lock:
            pending, self.pending = self.pending, []
            bounds, counts = self.bounds, self.counts
            for v in pending:
                counts[bisect.bisect_left(bounds, v)] += 1
                self.total += v

    def collect(self) -> Iterator[Metric]:
        self.fold()
        msgs = CounterMetricFamily(
            "engine_messages",
            "Messages handled by kind (send, reply, error, publish, cancel).",
            labels=["kind"],
        )
        for kind, n in sorted(self.totals().items()):
            msgs.add_metric([kind], n)
        yield msgs
        with self.lock:
            cumulative, running = [], 0
            for bound, n in zip([*self.bounds, float("inf")], self.counts, strict=True):
                running += n
                cumulative.append((_le(bound), float(running)))
            total = self.total
        yield HistogramMetricFamily(
            "engine_message_latency_seconds",
            "Time from a message's send to its delivery (or its reply), in seconds.",
            buckets=cumulative,
            sum_value=total,
        )

    def totals(self) -> dict[str, int]:
        """Counts by kind: the int slots plus the dict of other kinds (zeros omitted)."""
        out = {k: v for k, v in self.counters.as_dict().items() if v}
        for kind, n in list(self.messages.items()):
            out[kind] = out.get(kind, 0) + n
        return out

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("engine_messages", "", labels=["kind"])
        yield HistogramMetricFamily("engine_message_latency_seconds", "")


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Metrics:
    """Every metric the engine exports, registered on :attr:`registry` (an :class:`EngineRegistry`).

    ``Metrics()`` is cheap; each runtime, broker or node may own one, or share
    :func:`default_metrics`. Serve it with :class:`engine.observe.ObserveServer`.
    """

    def __init__(self, *, latency_buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        if not latency_buckets or any(b <= 0 for b in latency_buckets):
            raise ValueError("latency_buckets must be a non-empty sequence of positive seconds")
        self.registry = EngineRegistry()
        self._hot = _HotPath(latency_buckets)
        self.registry.register(self._hot)
        r = self.registry
        self.tasks = Counter(
            "engine_tasks",
            "Tasks finished, by status (ok, error, cancelled, timeout).",
            ["status"],
            registry=r,
        )
        self.task_duration = Histogram(
            "engine_task_duration_seconds",
            "Task run time in seconds.",
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.workers = Gauge(
            "engine_workers",
            "Workers (nodes) by status (ready, busy, lost).",
            ["status"],
            registry=r,
        )
        self.node_agents = Gauge(
            "engine_node_agents",
            "Agent instances hosted per node and agent type.",
            ["node", "agent_type"],
            registry=r,
        )
        self.llm_duration = Histogram(
            "engine_llm_call_duration_seconds",
            "LLM call latency in seconds.",
            ["model"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.llm_tokens = Counter(
            "engine_llm_tokens",
            "LLM tokens by model and kind (prompt, completion).",
            ["model", "kind"],
            registry=r,
        )
        self.llm_cost = Counter(
            "engine_llm_cost",
            "LLM spend in US dollars.",
            ["model"],
            registry=r,
        )
        # LLM calls by provider, model and kind (engine.llm feeds these and llm_call above).
        self.llm_calls = Counter(
            "engine_llm_calls",
            "LLM calls by provider, model, kind and status (ok, error, cached, refused).",
            ["provider", "model", "kind", "status"],
            registry=r,
        )
        self.llm_errors = Counter(
            "engine_llm_errors",
            "Failed LLM attempts by provider, model, kind and error (rate_limit, server, ...).",
            ["provider", "model", "kind", "error"],
            registry=r,
        )
        self.llm_breaker = Gauge(
            "engine_llm_breaker_state",
            "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open.",
            ["provider"],
            registry=r,
        )
        self.llm_cache = Counter(
            "engine_llm_cache",
            "LLM cache lookups by result (exact, semantic, miss).",
            ["result"],
            registry=r,
        )
        self.cache_requests = Counter(
            "engine_cache_requests",
            "Semantic/tool cache lookups by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.vector_search = Histogram(
            "engine_vector_search_seconds",
            "Vector search latency in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "engine_queue_depth",
            "Messages waiting in mailboxes, by agent type.",
            ["agent_type"],
            registry=r,
        )
        self.pending_tasks = Gauge(
            "engine_pending_tasks",
            "Tasks submitted and not yet finished.",
            registry=r,
        )
        self.active_workers = Gauge(
            "engine_active_workers",
            "Workers currently running a task.",
            registry=r,
        )

    # -- hot path ---------------------------------------------------------------------------
    @property
    def hot(self) -> HotCounters:
        """Int slots for the hottest paths: ``hot.send += 1`` (cheaper than any call)."""
        return self._hot.counters

    def message(self, kind: str, n: int = 1) -> None:
        """Count ``n`` messages of ``kind`` (a dict add, ~60 ns; exported on scrape).

        On a per-message path prefer the :attr:`hot` slots, which avoid the call.
        """
        d = self._hot.messages
        d[kind] = d.get(kind, 0) + n

    def set_message_totals(self, counts: Mapping[str, int]) -> None:
        """Replace the totals of the given kinds (for owners that keep their own counters)."""
        self._hot.messages.update(counts)

    def message_latency(self, seconds: float) -> None:
        """Record one message latency (buffered; folded into buckets on scrape)."""
        p = self._hot.pending
        p.append(seconds)
        if len(p) >= _FLUSH_EVERY:
            self._hot.fold()

    # -- convenience recorders --------------------------------------------------------------
    def task_finished(self, status: str, seconds: float) -> None:
        """One task ended with ``status`` after ``seconds``."""
        self.tasks.labels(status).inc()
        self.task_duration.observe(seconds)

    def llm_call(
        self,
        model: str,
        seconds: float,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost: float = 0.0,
    ) -> None:
        """One LLM call: latency, token counts and its cost in dollars."""
        if prompt_tokens < 0 or completion_tokens < 0 or cost < 0:
            raise ValueError("token counts and cost must be >= 0")
        self.llm_duration.labels(model).observe(seconds)
        if prompt_tokens:
            self.llm_tokens.labels(model, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.llm_tokens.labels(model, "completion").inc(completion_tokens)
        if cost:
            self.llm_cost.labels(model).inc(cost)

    def cache_lookup(self, hit: bool) -> None:
        self.cache_requests.labels("hit" if hit else "miss").inc()

    def on_collect(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` before every scrape (set gauges from live state there)."""
        self.registry.add_hook(fn)

    # -- export -----------------------------------------------------------------------------
    def messages_total(self) -> dict[str, int]:
        """A snapshot of the message counters by kind (zeros omitted)."""
        return self._hot.totals()

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric (what ``/metrics`` serves)."""
        return generate_latest(self.registry)


_default: Metrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> Metrics:
    """The process-wide :class:`Metrics` for components not handed their own."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Metrics()
        return _default
