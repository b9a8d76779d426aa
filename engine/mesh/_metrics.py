"""Prometheus exposition of broker counters (``engine broker --metrics-port P``).

The broker loop counts in plain ints; a collector reads them at scrape time, so the hot
path pays no metric locks. Uses its own registry, never the global one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from engine.mesh.broker import Broker

__all__ = ["serve_metrics"]


class _BrokerCollector:
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


def serve_metrics(broker: Broker, port: int, addr: str = "0.0.0.0") -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_BrokerCollector(broker))
    start_http_server(port, addr=addr, registry=registry)
    return registry
