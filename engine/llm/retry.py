"""Retry policy of the router: exponential backoff with full jitter, ``Retry-After`` honoured.

Only retryable failures are retried (429, 408/409/425, 5xx, connection errors, timeouts,
malformed replies; never 400/401/403/404/422). Backoff before retry ``n`` (1-based) is
uniform in ``[0, min(cap, base * 2 ** (n - 1))]`` ("full jitter"); a server's
``Retry-After`` replaces it. When another provider can take the call, retries on this one
stop as soon as they would reach past ``fallback_within`` seconds after its first failure,
so a fallback happens within that time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from engine.errors import ProviderError

__all__ = ["RetryPolicy", "RetryState"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` per provider (1 = no retry); seconds for the others."""

    attempts: int = 3
    base: float = 0.25
    cap: float = 8.0
    max_retry_after: float = 60.0
    fallback_within: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be >= 1, got {self.attempts}")
        if not (self.base >= 0 and self.cap >= self.base and self.max_retry_after >= 0):
            raise ValueError("retry base, cap and max_retry_after must be >= 0 and base <= cap")
        if not self.fallback_within >= 0:
            raise ValueError("fallback_within must be >= 0 seconds")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full-jitter delay before retry number ``retry`` (1-based)."""
        return rng.uniform(0.0, min(self.cap, self.base * (2 ** (retry - 1))))


@dataclass(slots=True)
class RetryState:
    """Retry bookkeeping for one provider within one call."""

    policy: RetryPolicy
    has_fallback: bool
    failures: int = 0
    first_failure: float | None = None
    delays: list[float] = field(default_factory=list)

    def next_delay(self, exc: ProviderError, now: float, rng: random.Random) -> float | None:
        """Seconds to wait before retrying after ``exc``, or None: give this provider up."""
        if not exc.retryable:
            return None
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = now
        if self.failures >= self.policy.attempts:
            return None
        if exc.retry_after is not None:
            if exc.retry_after > self.policy.max_retry_after:
                return None
            delay = exc.retry_after
        else:
            delay = self.policy.backoff(self.failures, rng)
        if self.has_fallback and (now - self.first_failure) + delay >= self.policy.fallback_within:
            return None
        self.delays.append(delay)
        return delay

    def time_left(self, now: float) -> float | None:
        """Seconds an attempt may take before the fallback window closes (None: no bound)."""
        if not self.has_fallback or self.first_failure is None:
            return None
        return max(0.0, self.policy.fallback_within - (now - self.first_failure))
