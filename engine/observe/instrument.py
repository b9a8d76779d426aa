"""Attach :class:`Metrics` to a runtime or a broker: read their counters at scrape time.

Nothing here runs per message: both the runtime and the broker keep plain-int counters
and gauges of their own (``Runtime.stats()``, ``Broker.stats`` / ``Broker.peers()``); the
functions below register an ``on_collect`` hook that copies them into the engine metrics
when ``/metrics`` is scraped. Per-message latency needs the owner to call
:meth:`Metrics.message_latency` (sampled) on its hot path; see docs/observability.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast

from engine.observe.health import broker_checks, node_checks, runtime_checks
from engine.observe.metrics import Metrics
from engine.observe.server import ObserveServer

__all__ = [
    "ALL_TYPES",
    "instrument_broker",
    "instrument_cache",
    "instrument_node",
    "instrument_runtime",
    "serve",
]

#: ``agent_type`` label of gauges a source only knows in total.
ALL_TYPES = "(all)"


class _RuntimeLike(Protocol):
    @property
    def agent_count(self) -> int: ...


class _BrokerLike(Protocol):
    stats: dict[str, int]

    def peers(self) -> dict[str, dict[str, Any]]: ...


def _message_counts(source: object) -> Mapping[str, int] | None:
    counts = getattr(source, "message_counts", None)
    if callable(counts):
        counts = counts()
    return counts if isinstance(counts, Mapping) else None


def instrument_runtime(
    rt: _RuntimeLike, metrics: Metrics | None = None, *, derive_replies: bool = False
) -> Metrics:
    """Export ``rt.stats()`` (and ``rt.message_counts`` if the runtime keeps it) on scrape.

    Gauges: ``engine_queue_depth{agent_type="(all)"}`` (queued messages),
    ``engine_active_workers`` (busy agents), ``engine_pending_tasks`` (requests in flight,
    local and remote), ``engine_workers{status}`` (agents idle/busy).

    ``derive_replies=True`` sets ``reply`` at scrape time to ``send - error - in flight``
    (for a runtime that counts requests, not replies: ``Runtime.message_counts()`` derives
    its ``send`` total from its sequence counter, at no per-message cost).
    """
    m = metrics if metrics is not None else Metrics()

    def refresh() -> None:
        stats = getattr(rt, "stats", None)
        st = stats() if callable(stats) else {"agents": getattr(rt, "agent_count", 0)}
        m.queue_depth.labels(ALL_TYPES).set(st.get("queued", 0))
        busy = st.get("busy_agents", 0)
        m.active_workers.set(busy)
        m.workers.labels("busy").set(busy)
        m.workers.labels("idle").set(max(0, st.get("agents", 0) - busy))
        m.pending_tasks.set(st.get("in_flight", 0) + st.get("remote_pending", 0))
        counts = _message_counts(rt)
        if counts is not None:
            m.set_message_totals(counts)
        if derive_replies:  # every request answered without error got a reply
            m.hot.reply = 0
            t = m.messages_total()
            m.set_message_totals(
                {"reply": max(0, t.get("send", 0) - t.get("error", 0) - st.get("in_flight", 0))}
            )

    m.on_collect(refresh)
    return m


# Broker counters that are message flows, and the ``kind`` label each becomes.
_BROKER_KINDS: Mapping[str, str] = {
    "submitted": "submitted",
    "delivered": "delivered",
    "replies": "reply",
    "nacked": "nack",
    "redelivered": "redelivered",
    "dead_lettered": "dead_letter",
    "malformed": "malformed",
    "unauthorized": "unauthorized",
}


def instrument_broker(broker: _BrokerLike, metrics: Metrics | None = None) -> Metrics:
    """Export a broker's counters and peers on scrape (what ``engine top`` shows).

    ``engine_messages_total{kind}`` from the broker's counters, ``engine_node_agents{node,
    agent_type}`` = 1 per type a node announced, ``engine_workers{status}`` (nodes ready or
    saturated), ``engine_queue_depth{agent_type}`` (messages queued per type's nodes),
    ``engine_pending_tasks`` (deliveries in flight).
    """
    m = metrics if metrics is not None else Metrics()
    seen: set[tuple[str, str]] = set()

    def refresh() -> None:
        stats = dict(broker.stats)
        m.set_message_totals({k: stats[s] for s, k in _BROKER_KINDS.items() if s in stats})
        now: set[tuple[str, str]] = set()
        depth: dict[str, float] = {}
        ready = saturated = inflight = 0
        for name, peer in broker.peers().items():
            types = list(peer.get("types", ()))
            if not types:
                continue  # clients and orchestrators host no agents
            for t in types:
                now.add((name, t))
                depth[t] = depth.get(t, 0) + peer.get("queued", 0) / len(types)
            inflight += peer.get("inflight", 0)
            if peer.get("inflight", 0) >= peer.get("window", 1) > 0:
                saturated += 1
            else:
                ready += 1
        for key in seen - now:
            m.node_agents.remove(*key)
        for key in now:
            m.node_agents.labels(*key).set(1)
        seen.clear()
        seen.update(now)
        for t, q in depth.items():
            m.queue_depth.labels(t).set(q)
        queued = getattr(broker, "queued", None)
        total = queued if isinstance(queued, int | float) else sum(depth.values())
        m.queue_depth.labels(ALL_TYPES).set(total)
        m.workers.labels("ready").set(ready)
        m.workers.labels("saturated").set(saturated)
        m.pending_tasks.set(inflight)

    m.on_collect(refresh)
    return m


class _PeerLike(Protocol):
    name: str
    stats: dict[str, int]


def instrument_node(node: _PeerLike, metrics: Metrics | None = None) -> Metrics:
    """Export a mesh node's (or client's) counters on scrape.

    ``engine_messages_total{kind}`` from ``node.stats`` (executed, replies, duplicates,
    resent, ...), ``engine_node_agents{node, agent_type}`` = 1 per hosted type.
    """
    m = metrics if metrics is not None else Metrics()
    types = list(getattr(node, "types", ()) or ())  # a Node's hosted types; none for a client
    for t in types:
        m.node_agents.labels(node.name, t).set(1)

    def refresh() -> None:
        m.set_message_totals(dict(node.stats))

    m.on_collect(refresh)
    return m


class _CacheLike(Protocol):
    hits: int
    misses: int


def instrument_cache(cache: _CacheLike, metrics: Metrics | None = None) -> Metrics:
    """Export a cache's lookups (``hits``/``misses``, e.g. a
    :class:`~engine.memory.SemanticCache`) as ``engine_cache_requests_total{result}``: the
    increase since the previous scrape is added then, so lookups cost nothing extra."""
    m = metrics if metrics is not None else Metrics()
    seen = {"hit": cache.hits, "miss": cache.misses}
    for result in seen:
        m.cache_requests.labels(result)  # both series exist from the first scrape
    m.cache_requests.labels("hit").inc(seen["hit"])
    m.cache_requests.labels("miss").inc(seen["miss"])

    def refresh() -> None:
        for result, now in (("hit", cache.hits), ("miss", cache.misses)):
            if now > seen[result]:
                m.cache_requests.labels(result).inc(now - seen[result])
            seen[result] = now

    m.on_collect(refresh)
    return m


def serve(
    source: _RuntimeLike | _BrokerLike | _PeerLike,
    port: int,
    *,
    host: str = "127.0.0.1",
    metrics: Metrics | None = None,
) -> ObserveServer:
    """Instrument a runtime, broker or node; serve ``/metrics``, ``/debug/profile``,
    ``/healthz`` and ``/readyz`` (the source's readiness checks) on ``port``."""
    if hasattr(source, "peers"):
        m = instrument_broker(cast(_BrokerLike, source), metrics)
        checks = broker_checks(source)
    elif isinstance(getattr(source, "stats", None), Mapping):
        m = instrument_node(cast(_PeerLike, source), metrics)
        checks = node_checks(source)
    else:
        m = instrument_runtime(cast(_RuntimeLike, source), metrics)
        checks = runtime_checks(source)
    return ObserveServer(m, host=host, port=port, checks=checks).start()
