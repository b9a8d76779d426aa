"""What a job keeps in the store, and how a resumed job rebuilds itself from it.

- :class:`JobSpec` is the job record's ``data``: the task, budget limits, and the run
  configuration (``engine run``'s worker specs and model), so ``engine resume`` can rebuild
  the same orchestrator in a fresh process.
- :class:`JobCheckpoint` is written after every step: the compact counters, and the
  attempt numbers of the subtasks running at that moment (they run again on resume, as
  attempt n + 1).
- :func:`restore` folds the job's ledger entries, in append order, into a :class:`Restored`
  state: every plan generation and plan call, each finished subtask's output, each progress
  report, the answer or the end. The ledger is authoritative: a crash between a ledger
  append and the checkpoint that follows loses nothing, because the checkpoint only adds
  the running attempts.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from engine.orchestration.ledgers import (
    AnswerEntry,
    EndEntry,
    LedgerRecord,
    PlanEntry,
    ProgressEntry,
    StepEntry,
)
from engine.orchestration.plans import Plan

__all__ = ["JobCheckpoint", "JobSpec", "Restored", "restore"]

KIND = "orchestration"  # the store's job kind for orchestrator jobs


class Limits(msgspec.Struct, frozen=True, array_like=True):
    """A budget's limits (None: unlimited)."""

    tokens: int | None = None
    cost: float | None = None
    calls: int | None = None


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The job record's ``data``: what was asked, within which limits, run how."""

    task: str
    budget: Limits | None = None
    config: dict[str, str] = {}


class JobCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """The job's state after one step (one checkpoint version per step)."""

    step: int
    status: str
    gen: int
    replans: int
    stalls: int
    completed: int
    failed: int
    progress_calls: int
    tokens: int
    cost: float
    calls: int
    running: dict[str, int] = {}  # subtask id -> attempt, for those running right now


class Restored(msgspec.Struct, kw_only=True):
    """A job's state rebuilt from its ledger (see :func:`restore`)."""

    plans: dict[int, Plan] = {}  # gen -> the plan that ran (valid ones only)
    plan_calls: dict[tuple[int, int], PlanEntry] = {}  # (gen, attempt) -> recorded call
    reasons: dict[int, str] = {}  # gen -> why it was planned
    steps: dict[str, StepEntry] = {}  # subtask id -> its latest step (any gen)
    gen_steps: dict[int, dict[str, StepEntry]] = {}
    progress: list[ProgressEntry] = []
    answer: AnswerEntry | None = None
    end: EndEntry | None = None
    tokens: int = 0
    cost: float = 0.0
    calls: int = 0

    @property
    def gen(self) -> int:
        """The latest generation with a valid plan (-1: none yet)."""
        return max(self.plans, default=-1)

    def outputs(self) -> dict[str, str]:
        """Outputs of every completed subtask, by id (a later generation wins)."""
        return {sid: st.output for sid, st in self.steps.items() if st.status == "completed"}

    def covered(self) -> set[str]:
        """Step keys (``gen:subtask``) some recorded progress call covered."""
        return {key for p in self.progress for key in p.covers}


def restore(records: Iterable[LedgerRecord]) -> Restored:
    """Fold ledger records (append order) into the state a resumed job starts from."""
    r = Restored()
    for rec in records:
        r.tokens += rec.tokens
        r.cost += rec.cost
        body = rec.body
        if isinstance(body, StepEntry):
            r.calls += body.calls
            r.steps[body.subtask] = body
            r.gen_steps.setdefault(body.gen, {})[body.subtask] = body
        elif isinstance(body, ProgressEntry):
            r.calls += 1
            r.progress.append(body)
        elif isinstance(body, PlanEntry):
            r.calls += 1
            r.plan_calls[(body.gen, body.attempt)] = body
            if body.plan is not None and not body.errors:
                r.plans[body.gen] = body.plan
                r.reasons[body.gen] = body.reason
        elif isinstance(body, AnswerEntry):
            r.calls += 1
            r.answer = body
        else:
            r.end = body
    return r
