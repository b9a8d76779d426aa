"""Budgets: limits on tokens, cost and calls, enforced *before* a call is sent.

A call reserves its estimate (prompt tokens + ``max_tokens``, and their price) on every
budget that applies; if any budget would go over, nothing is reserved, no request is sent
and :class:`~engine.errors.BudgetExceeded` names the budget, the limit and the estimate.
After the call the reservation is settled with the real usage; on error it is released.
Reserving is one synchronous step under a lock, so any number of concurrent calls racing for
the last part of a budget cannot overshoot it with their estimates.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Final

from engine.errors import BudgetExceeded

__all__ = ["NO_HOLD", "Budget", "Hold", "Reservation", "reserve"]

_KINDS: Final = ("tokens", "cost", "calls")


class Budget:
    """Limits on ``tokens``, ``cost`` (US dollars) and ``calls``; None means no limit.

    ``name`` says what the budget is for in errors and audit records (``"job:42"``,
    ``"tenant:acme"``, ``"agent:planner"``). One budget may be shared by every call of a job,
    tenant or agent; pass several to a call to apply them all. Thread-safe.
    """

    __slots__ = (
        "_lock",
        "calls",
        "cost",
        "name",
        "reserved_calls",
        "reserved_cost",
        "reserved_tokens",
        "tokens",
        "used_calls",
        "used_cost",
        "used_tokens",
    )

    def __init__(
        self,
        *,
        tokens: int | None = None,
        cost: float | None = None,
        calls: int | None = None,
        name: str = "budget",
    ) -> None:
        for what, v in (("tokens", tokens), ("cost", cost), ("calls", calls)):
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0
            ):
                raise ValueError(f"budget {what} must be a number >= 0 or None, got {v!r}")
            if v is not None and not math.isfinite(v):
                raise ValueError(f"budget {what} must be finite, got {v!r}")
        if not isinstance(name, str) or not name:
            raise ValueError("budget name must be a non-empty str")
        self.name = name
        self.tokens = tokens
        self.cost = cost
        self.calls = calls
        self.used_tokens = 0
        self.used_cost = 0.0
        self.used_calls = 0
        self.reserved_tokens = 0
        self.reserved_cost = 0.0
        self.reserved_calls = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        parts = [
            f"{k}={getattr(self, 'used_' + k):g}/{getattr(self, k):g}"
            for k in _KINDS
            if getattr(self, k) is not None
        ]
        return f"<Budget {self.name} {' '.join(parts) or 'unlimited'}>"

    @property
    def needs_cost(self) -> bool:
        """Whether this budget limits cost (a call's price must then be known)."""
        return self.cost is not None

    def remaining(self) -> dict[str, float | None]:
        """What is left of each limit (None: unlimited), after usage and open reservations."""
        with self._lock:
            return {
                "tokens": _left(self.tokens, self.used_tokens + self.reserved_tokens),
                "cost": _left(self.cost, self.used_cost + self.reserved_cost),
                "calls": _left(self.calls, self.used_calls + self.reserved_calls),
            }

    def hold(self, tokens: int = 0, cost: float = 0.0, calls: int = 0) -> Reservation:
        """Reserve a share of this budget (e.g. a grant for work done elsewhere).

        All or nothing like a call's reservation (:class:`~engine.errors.BudgetExceeded`
        when it does not fit); settle it with what was really used, or release it.
        """
        return reserve((self,), tokens, cost, calls)

    def _refusal(self, tokens: int, cost: float, calls: int) -> BudgetExceeded | None:
        """Would reserving (tokens, cost, calls) exceed a limit? Call with the lock held."""
        if self.calls is not None and self.used_calls + self.reserved_calls + calls > self.calls:
            return BudgetExceeded(
                self.name, "calls", self.calls, self.used_calls + self.reserved_calls, calls
            )
        held = self.used_tokens + self.reserved_tokens
        if self.tokens is not None and held + tokens > self.tokens:
            return BudgetExceeded(self.name, "tokens", self.tokens, held, tokens)
        spent = self.used_cost + self.reserved_cost
        if self.cost is not None and spent + cost > self.cost + 1e-12:
            return BudgetExceeded(self.name, "cost", self.cost, spent, cost)
        return None


def _left(limit: float | None, held: float) -> float | None:
    return None if limit is None else max(0, limit - held)


class Reservation:
    """What one call holds on its budgets until :meth:`settle` or :meth:`release`."""

    __slots__ = ("budgets", "calls", "cost", "done", "tokens")

    def __init__(
        self, budgets: tuple[Budget, ...], tokens: int, cost: float, calls: int = 1
    ) -> None:
        self.budgets = budgets
        self.tokens = tokens
        self.cost = cost
        self.calls = calls
        self.done = False

    def settle(self, tokens: int, cost: float, calls: int | None = None) -> None:
        """Replace the reservation with the real usage (once; later calls do nothing).

        ``calls`` defaults to the number reserved (one for an LLM call).
        """
        if self.done:
            return
        self.done = True
        used_calls = self.calls if calls is None else calls
        # PERF: acquire/release rather than ``with``: ~1,100 instructions less per budget
        # (callgrind, benches/llm_call_instructions.py BUDGET=tokens)
        for b in self.budgets:
            lock = b._lock
            lock.acquire()
            try:
                b.reserved_tokens -= self.tokens
                b.reserved_cost -= self.cost
                b.reserved_calls -= self.calls
                b.used_tokens += tokens
                b.used_cost += cost
                b.used_calls += used_calls
            finally:
                lock.release()

    def release(self) -> None:
        """Give the reservation back (the call failed before using anything)."""
        if self.done:
            return
        self.done = True
        for b in self.budgets:
            with b._lock:
                b.reserved_tokens -= self.tokens
                b.reserved_cost -= self.cost
                b.reserved_calls -= self.calls


#: What :meth:`Budget.hold` returns: a share held until settled or released.
Hold = Reservation

#: The reservation of a call with no budget (settling or releasing it does nothing).
NO_HOLD: Final = Reservation((), 0, 0.0)
NO_HOLD.done = True


def reserve(budgets: Sequence[Budget], tokens: int, cost: float, calls: int = 1) -> Reservation:
    """Reserve ``tokens``, ``cost`` and ``calls`` on all ``budgets``, or on none.

    Raises :class:`~engine.errors.BudgetExceeded` for the first budget that would go over;
    then nothing is held anywhere.
    """
    if not budgets:
        return NO_HOLD
    if tokens < 0 or cost < 0 or calls < 0:
        raise ValueError("a reservation needs tokens, cost and calls >= 0")
    if type(budgets) is tuple and len(budgets) == 1:
        # PERF: one budget (a call's usual case) needs no order and no loops: ~5,000
        # instructions less (callgrind, benches/llm_call_instructions.py BUDGET=tokens)
        b = budgets[0]
        lock = b._lock
        lock.acquire()
        try:
            refusal = b._refusal(tokens, cost, calls)
            if refusal is not None:
                raise refusal
            b.reserved_tokens += tokens
            b.reserved_cost += cost
            b.reserved_calls += calls
        finally:
            lock.release()
        return Reservation(budgets, tokens, cost, calls)
    # Lock in a fixed order (by id) so two calls sharing budgets never deadlock.
    ordered = tuple(sorted(set(budgets), key=id))
    for b in ordered:
        b._lock.acquire()
    try:
        for b in ordered:
            refusal = b._refusal(tokens, cost, calls)
            if refusal is not None:
                raise refusal
        for b in ordered:
            b.reserved_tokens += tokens
            b.reserved_cost += cost
            b.reserved_calls += calls
    finally:
        for b in reversed(ordered):
            b._lock.release()
    return Reservation(ordered, tokens, cost, calls)
