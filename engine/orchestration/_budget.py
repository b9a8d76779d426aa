"""Budgets across workers: in process they share the job's budget, remotely they get a grant.

Every model call of a job must draw on the job's :class:`engine.llm.Budget`, reserved
before the call. A worker in this process does exactly that: its request carries no grant
and :meth:`SubtaskRequest.budget` returns the job's own budget (looked up here by job id).
A worker on a mesh node cannot reach that object, so the orchestrator carves a **grant**
out of the job's budget before dispatch, an equal share of what is left among the
subtasks not finished yet and the orchestrator itself (its progress and summarize calls
need their share too: the last subtask must not take everything), and the worker enforces
it with a budget of its own. When the
subtask reports, the grant is settled with what the worker says it spent and the rest goes
back to the job. No call goes out past the job's limit either way.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from engine.llm import Budget

__all__ = ["BudgetGrant", "Hold", "carve", "grant_budget", "grant_for", "job_budget", "share"]


class BudgetGrant(msgspec.Struct, frozen=True, array_like=True):
    """The part of the job's budget a subtask may spend (``None``: no limit on that).

    The orchestrator reserves it before dispatch and settles it with what the worker
    reports; a worker enforces it with :meth:`SubtaskRequest.budget`.
    """

    tokens: int | None = None
    cost: float | None = None
    calls: int | None = None


# job id -> budget of the jobs running in this process (removed when a job's driver ends)
_live: dict[str, Budget] = {}


def share(job_id: str, budget: Budget | None) -> None:
    """Make ``budget`` the one in-process workers of ``job_id`` draw on (None: forget)."""
    if budget is None:
        _live.pop(job_id, None)
    else:
        _live[job_id] = budget


def job_budget(job_id: str) -> Budget | None:
    return _live.get(job_id)


def grant_budget(grant: BudgetGrant) -> Budget:
    """A budget enforcing ``grant`` on the worker's side."""
    from engine.llm import Budget

    return Budget(tokens=grant.tokens, cost=grant.cost, calls=grant.calls, name="subtask grant")


class Hold:
    """A grant reserved on the job's budget (``Budget.hold``) until the subtask reports."""

    __slots__ = ("calls", "cost", "reservation", "tokens")

    def __init__(self, reservation: Any, tokens: int, cost: float, calls: int) -> None:
        self.reservation = reservation
        self.tokens = tokens
        self.cost = cost
        self.calls = calls

    def settle(self, tokens: int, cost: float, calls: int) -> None:
        """Replace the grant with what the worker spent; a report beyond the grant (which
        the worker's own budget could not have allowed) is capped at the grant."""
        self.reservation.settle(
            min(max(tokens, 0), self.tokens) if self.tokens else max(tokens, 0),
            min(max(cost, 0.0), self.cost) if self.cost else max(cost, 0.0),
            min(max(calls, 0), self.calls) if self.calls else max(calls, 0),
        )

    def release(self) -> None:
        self.reservation.release()


def grant_for(budget: Budget, live_runs: int) -> tuple[BudgetGrant, Hold]:
    """A remote subtask's grant: an equal share among the ``live_runs`` subtasks not
    finished yet and the orchestrator's own calls (one more party)."""
    return carve(budget, max(0, live_runs) + 1)


def carve(budget: Budget, ways: int) -> tuple[BudgetGrant, Hold]:
    """Hold ``1/ways`` of what is left of ``budget`` (per limit) as a worker's grant."""
    ways = max(1, ways)
    left = budget.remaining()
    tokens = int(left["tokens"] or 0) // ways
    cost = float(left["cost"] or 0.0) / ways
    calls = int(left["calls"] or 0) // ways
    if not math.isfinite(cost):
        cost = 0.0
    reservation = budget.hold(tokens, cost, calls)
    grant = BudgetGrant(
        tokens=tokens if budget.tokens is not None else None,
        cost=cost if budget.cost is not None else None,
        calls=calls if budget.calls is not None else None,
    )
    return grant, Hold(reservation, tokens, cost, calls)
