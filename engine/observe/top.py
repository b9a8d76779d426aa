"""``engine top``: a live terminal view of a broker's (or node's, or runtime's) ``/metrics``.

Shows nodes and the agent types they host, queue depths, message throughput by kind,
message latency percentiles (from the histogram's bucket deltas) and task counts.
Rates and percentiles come from the difference of two scrapes.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.table import Table

__all__ = ["Snapshot", "fetch", "parse", "quantile", "render"]


@dataclass
class Snapshot:
    """The numbers ``engine top`` shows, from one scrape."""

    at: float
    messages: dict[str, float] = field(default_factory=dict)
    latency_buckets: list[tuple[float, float]] = field(default_factory=list)  # (le, cumulative)
    queue_depth: dict[str, float] = field(default_factory=dict)
    workers: dict[str, float] = field(default_factory=dict)
    node_agents: dict[tuple[str, str], float] = field(default_factory=dict)
    tasks: dict[str, float] = field(default_factory=dict)
    pending_tasks: float = 0.0
    active_workers: float = 0.0


def parse(text: str, at: float | None = None) -> Snapshot:
    """Read a Prometheus text exposition into a :class:`Snapshot`."""
    snap = Snapshot(time.monotonic() if at is None else at)
    mesh: dict[str, float] = {}  # engine_mesh_*: read only when no engine_* names came
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == "engine_messages_total":
                snap.messages[labels.get("kind", "")] = value
            elif name == "engine_message_latency_seconds_bucket":
                snap.latency_buckets.append((float(labels["le"]), value))
            elif name == "engine_queue_depth":
                snap.queue_depth[labels.get("agent_type", "")] = value
            elif name == "engine_workers":
                snap.workers[labels.get("status", "")] = value
            elif name == "engine_node_agents":
                snap.node_agents[(labels.get("node", ""), labels.get("agent_type", ""))] = value
            elif name == "engine_tasks_total":
                snap.tasks[labels.get("status", "")] = value
            elif name == "engine_pending_tasks":
                snap.pending_tasks = value
            elif name == "engine_active_workers":
                snap.active_workers = value
            elif name.startswith("engine_mesh_"):
                mesh[name] = value
    if mesh and not snap.messages:  # only the mesh's raw collector (an older broker)
        for name, value in mesh.items():
            if name == "engine_mesh_peers":
                snap.workers["peers"] = value
            elif name == "engine_mesh_inflight":
                snap.pending_tasks = value
            elif name == "engine_mesh_queued":
                snap.queue_depth["(all)"] = value
            elif name.endswith("_total"):
                snap.messages[name[len("engine_mesh_") : -len("_total")]] = value
    snap.latency_buckets.sort()
    return snap


def fetch(url: str, timeout: float = 5.0) -> Snapshot:
    """Scrape ``url``; ``OSError``/``ValueError`` name what went wrong."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read().decode("utf-8", errors="replace")
    return parse(body)


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The ``q`` quantile of a cumulative histogram, interpolated in its bucket (nan if empty)."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def _delta_buckets(prev: Snapshot | None, cur: Snapshot) -> list[tuple[float, float]]:
    if prev is None or len(prev.latency_buckets) != len(cur.latency_buckets):
        return cur.latency_buckets
    return [
        (le, count - p)
        for (le, count), (_, p) in zip(cur.latency_buckets, prev.latency_buckets, strict=True)
    ]


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.3f} ms"


def render(prev: Snapshot | None, cur: Snapshot, source: str = "") -> RenderableType:
    """The tables for one refresh (rates need ``prev``)."""
    dt = (cur.at - prev.at) if prev is not None else 0.0
    nodes = Table(title="nodes", expand=True)
    nodes.add_column("node")
    nodes.add_column("agent types")
    nodes.add_column("instances", justify="right")
    per_node: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (node, agent_type), n in sorted(cur.node_agents.items()):
        per_node[node].append((agent_type, n))
    for node, entries in per_node.items():
        nodes.add_row(node, ", ".join(t for t, _ in entries), f"{sum(n for _, n in entries):g}")
    if not per_node:
        nodes.add_row("-", "-", "-")

    types = Table(title="agent types", expand=True)
    types.add_column("agent type")
    types.add_column("instances", justify="right")
    types.add_column("queue depth", justify="right")
    instances: dict[str, float] = defaultdict(float)
    for (_node, agent_type), n in cur.node_agents.items():
        instances[agent_type] += n
    for agent_type in sorted(set(instances) | set(cur.queue_depth)):
        types.add_row(
            agent_type,
            f"{instances.get(agent_type, 0):g}",
            f"{cur.queue_depth.get(agent_type, 0):g}",
        )

    traffic = Table(title="messages", expand=True)
    traffic.add_column("kind")
    traffic.add_column("total", justify="right")
    traffic.add_column("per second", justify="right")
    for kind, total in sorted(cur.messages.items()):
        rate = "-"
        if prev is not None and dt > 0:
            rate = f"{max(0.0, total - prev.messages.get(kind, 0.0)) / dt:,.1f}"
        traffic.add_row(kind, f"{total:,.0f}", rate)

    buckets = _delta_buckets(prev, cur)
    latency = Table(title="message latency" + (" (last interval)" if prev else ""), expand=True)
    for col in ("p50", "p95", "p99", "count"):
        latency.add_column(col, justify="right")
    count = buckets[-1][1] if buckets else 0.0
    latency.add_row(*(_ms(quantile(buckets, q)) for q in (0.5, 0.95, 0.99)), f"{count:,.0f}")

    tasks = Table(title="tasks and workers", expand=True)
    tasks.add_column("what")
    tasks.add_column("value", justify="right")
    for status, n in sorted(cur.tasks.items()):
        tasks.add_row(f"tasks {status}", f"{n:,.0f}")
    tasks.add_row("pending tasks", f"{cur.pending_tasks:g}")
    tasks.add_row("active workers", f"{cur.active_workers:g}")
    for status, n in sorted(cur.workers.items()):
        tasks.add_row(f"workers {status}", f"{n:g}")
    header = f"[bold]engine top[/bold]  {source}  " + (f"interval {dt:.1f}s" if prev else "")
    return Group(header, nodes, types, traffic, latency, tasks)
