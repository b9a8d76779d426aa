"""Budgets across workers: in process they share the job's budget, remotely they get a grant.

Every model call of a job must draw on the job's :class:`engine.llm.Budget`, reserved
before the call. A worker in this process does exactly that: its request carries no grant
and :meth:`SubtaskRequest.budget` returns the job's own budget (looked up here by job id).
A worker on a mesh node cannot reach that object, so the orchestrator carves a **grant**
out of the job's budget before dispatch, an equal share of what is left among the
subtasks not finished yet, and the worker enforces it with a budget of its own. When the
subtask reports, the grant is settled with what the worker says it spent and the rest goes
back to the job. No call goes out past the job's limit either way.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.llm import Budget
    from engine.orchestration.worker import BudgetGrant

__all__ = ["Hold", "carve", "grant_budget", "job_budget", "share"]

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
    """A grant reserved on the job's budget until the subtask reports."""

    __slots__ = ("budget", "calls", "cost", "done", "tokens")

    def __init__(self, budget: Budget, tokens: int, cost: float, calls: int) -> None:
        self.budget = budget
        self.tokens = tokens
        self.cost = cost
        self.calls = calls
        self.done = False

    def settle(self, tokens: int, cost: float, calls: int) -> None:
        """Replace the grant with what the worker spent (at most the grant; once)."""
        if self.done:
            return
        self.done = True
        b = self.budget
        with b._lock:
            b.reserved_tokens -= self.tokens
            b.reserved_cost -= self.cost
            b.reserved_calls -= self.calls
            b.used_tokens += min(max(tokens, 0), self.tokens) if b.tokens is not None else tokens
            b.used_cost += min(max(cost, 0.0), self.cost) if b.cost is not None else cost
            b.used_calls += min(max(calls, 0), self.calls) if b.calls is not None else calls

    def release(self) -> None:
        self.settle(0, 0.0, 0)


def carve(budget: Budget, ways: int) -> tuple[BudgetGrant, Hold]:
    """Reserve ``1/ways`` of what is left of ``budget`` (per limit) as a worker's grant."""
    ways = max(1, ways)
    with budget._lock:
        tokens = calls = 0
        cost = 0.0
        if budget.tokens is not None:
            left = budget.tokens - budget.used_tokens - budget.reserved_tokens
            tokens = max(0, left // ways)
            budget.reserved_tokens += tokens
        if budget.cost is not None:
            left_cost = budget.cost - budget.used_cost - budget.reserved_cost
            cost = max(0.0, left_cost / ways)
            if not math.isfinite(cost):
                cost = 0.0
            budget.reserved_cost += cost
        if budget.calls is not None:
            left_calls = budget.calls - budget.used_calls - budget.reserved_calls
            calls = max(0, left_calls // ways)
            budget.reserved_calls += calls
    from engine.orchestration.worker import BudgetGrant

    grant = BudgetGrant(
        tokens=tokens if budget.tokens is not None else None,
        cost=cost if budget.cost is not None else None,
        calls=calls if budget.calls is not None else None,
    )
    return grant, Hold(budget, tokens, cost, calls)
