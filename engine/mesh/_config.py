"""The broker core's settings and bounds (``Broker(...)`` and ``engine broker`` flags).

Every table a peer can grow is bounded here: peers, queued messages and bytes (per
submitter and in total), the submission window, deliveries per node, tenants, sticky
routes. Over a bound, a submission is refused with NACK BUSY (and a retry hint) and a
registration with DISCONNECT RETRY; nothing is dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.mesh import protocol as P

__all__ = ["BrokerConfig", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Settings of a :class:`~engine.mesh.broker_core.BrokerCore` (times in seconds)."""

    heartbeat: float = 0.5  # the broker's interval; a peer silent for 3 of its own is dead
    max_attempts: int = 5  # deliveries before a message is dead-lettered
    client_credit: int = 1024  # submission window per peer (Welcome.credit), enforced
    max_frame: int = P.MAX_FRAME
    max_queued: int = 1_000_000  # messages held (queued, parked or in flight), in total
    max_queued_bytes: int = 512 * 1024 * 1024  # bytes of those messages, in total
    max_peer_bytes: int = 64 * 1024 * 1024  # bytes of one submitter's unsettled messages
    max_peers: int = 4096  # registered peers
    max_node_credit: int = 4096  # a node's delivery window is capped at this
    max_heartbeat: float = 0.0  # longest heartbeat a peer may choose; 0: 10 x heartbeat
    route_timeout: float = 10.0  # a message for a type with no node waits this long
    startup_grace: float = 0.0  # after start, unknown types and recovery wait; 0: max(2, 4 hb)
    delivery_timeout: float = 300.0  # a delivery unanswered this long is redelivered
    policy: str = "least_outstanding"  # how a message for an agent type picks a node
    batch: int = 2048  # messages read per loop iteration
    max_sticky: int = 262_144  # remembered AgentId -> node affinities
    max_tenants: int = 1024  # distinct live tenants; more share one overflow lane
    tenant_weights: Mapping[str, int] = field(default_factory=dict)  # DRR weights (default 1)
    client_rate: float | None = None  # submissions per second per peer (token bucket)
    client_burst: float | None = None  # bucket size; default max(1, client_rate)

    def __post_init__(self) -> None:
        for name in ("heartbeat", "route_timeout", "delivery_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        for name in (
            "max_attempts",
            "client_credit",
            "max_frame",
            "max_queued",
            "max_queued_bytes",
            "max_peer_bytes",
            "max_peers",
            "max_node_credit",
            "batch",
            "max_sticky",
            "max_tenants",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.policy not in ("least_outstanding", "round_robin"):
            raise ValueError(f"unknown policy {self.policy!r}")
        if self.client_rate is not None and not self.client_rate > 0:
            raise ValueError(f"client_rate must be > 0 or None, got {self.client_rate!r}")
        for tenant, weight in self.tenant_weights.items():
            if not isinstance(weight, int) or not 1 <= weight <= 1_000_000:
                raise ValueError(f"weight of tenant {tenant!r} must be an int in 1..1000000")

    @property
    def grace(self) -> float:
        return self.startup_grace if self.startup_grace > 0 else max(2.0, 4 * self.heartbeat)

    @property
    def heartbeat_cap(self) -> float:
        return self.max_heartbeat if self.max_heartbeat > 0 else 10 * self.heartbeat


class TokenBucket:
    """``rate`` tokens per second, at most ``burst``; :meth:`take` answers how long to wait."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float | None, now: float) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.tokens = self.burst
        self.last = now

    def take(self, now: float) -> float:
        """0.0 if a token was taken, else the seconds until one is available."""
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
