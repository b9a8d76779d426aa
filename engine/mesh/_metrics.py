"""The broker's own counters as ``engine_mesh_*`` (kept beside the ``engine_*`` names).

``engine broker --metrics-port P`` serves :func:`engine.observe.instrument.serve` (the
``engine_*`` metrics ``engine top`` reads, ``/debug/profile``); this collector adds every
raw broker counter (``engine_mesh_received_total``, ``engine_mesh_peers_dead_total``, ...)
and the peer/in-flight/queue gauges to the same registry. The broker loop counts in plain
ints; the collector reads them at scrape time, so the hot path pays no metric locks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from engine.mesh.broker import Broker

__all__ = ["MeshCollector"]


class MeshCollector:
    """``engine_mesh_<counter>_total`` per broker counter, peers, in flight, queued."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def collect(self) -> Iterator[Metric]:
        b = self._broker
        for name, value in list(b.stats.items()):
            yield CounterMetricFamily(f"engine_mesh_{name}", f"broker counter {name}", value=value)
        peers = b.peers()
        yield GaugeMetricFamily("engine_mesh_peers", "registered peers", value=len(peers))
        yield GaugeMetricFamily(
            "engine_mesh_inflight",
            "deliveries awaiting an answer",
            value=sum(p["inflight"] for p in peers.values()),
        )
        yield GaugeMetricFamily(
            "engine_mesh_queued", "messages queued in the broker", value=b.queued
        )
