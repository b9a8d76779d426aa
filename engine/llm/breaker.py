"""A per-provider circuit breaker: closed → open → half-open → closed.

Closed: calls pass; the breaker opens after ``failures`` consecutive failures, or when the
failure rate over the last ``window`` seconds exceeds ``error_rate`` (once at least
``min_calls`` calls ended in the window). Open: calls are refused (the router falls back at
once) until ``cooldown`` seconds passed. Half-open: one probe call passes; its success
closes the breaker, its failure opens it again for another cool-down. The clock is
injected, so tests drive the cool-down.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["BreakerPolicy", "CircuitBreaker", "State"]

State = Literal["closed", "open", "half_open"]
_WINDOW_MAX: Final = 4096  # outcomes kept for the rate check (bounded)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and how long it stays open (seconds)."""

    failures: int = 5
    error_rate: float = 0.5
    window: float = 60.0
    min_calls: int = 20
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        if self.failures < 1 or self.min_calls < 1:
            raise ValueError("breaker failures and min_calls must be >= 1")
        if not 0.0 < self.error_rate <= 1.0:
            raise ValueError(f"breaker error_rate must be in (0, 1], got {self.error_rate}")
        if not (self.window > 0 and self.cooldown >= 0):
            raise ValueError("breaker window must be > 0 and cooldown >= 0 seconds")


class CircuitBreaker:
    """One provider's breaker; ``on_change(name, state)`` is told every transition."""

    __slots__ = (
        "_clock", "_on_change", "_outcomes", "consecutive", "name", "opened_at", "policy",
        "probing", "state",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, State], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy or BreakerPolicy()
        self.state: State = "closed"
        self.consecutive = 0
        self.opened_at = 0.0
        self.probing = False
        self._outcomes: deque[tuple[float, bool]] = deque(maxlen=_WINDOW_MAX)
        self._clock = clock
        self._on_change = on_change

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} {self.state}>"

    def _move(self, state: State) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(self.name, state)

    def allow(self) -> bool:
        """May a call go to this provider now? (Half-open: only the one probe.)"""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock() - self.opened_at < self.policy.cooldown:
                return False
            self._move("half_open")
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.consecutive = 0
        self._record(True)
        if self.state == "half_open":
            self.probing = False
            self._outcomes.clear()
            self._move("closed")

    def failure(self) -> None:
        self.consecutive += 1
        self._record(False)
        if self.state == "half_open" or (
            self.state == "closed"
            and (self.consecutive >= self.policy.failures or self._rate_exceeded())
        ):
            self._open()

    def neutral(self) -> None:
        """The call ended without saying anything about health (cancelled, bad request)."""
        if self.state == "half_open":
            self.probing = False  # let the next call probe

    def _open(self) -> None:
        self.opened_at = self._clock()
        self.probing = False
        self._move("open")

    def _record(self, ok: bool) -> None:
        self._outcomes.append((self._clock(), ok))

    def _rate_exceeded(self) -> bool:
        horizon = self._clock() - self.policy.window
        out = self._outcomes
        while out and out[0][0] < horizon:
            out.popleft()
        if len(out) < self.policy.min_calls:
            return False
        failed = sum(1 for _, ok in out if not ok)
        return failed / len(out) > self.policy.error_rate
