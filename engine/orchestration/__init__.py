"""Orchestration: a task goes in, a plan runs on worker agents, an answer comes out.

Magentic-One's design on this engine: the orchestrator asks a model for a :class:`Plan`
(structured output), runs its subtasks on workers (ordinary agents declaring
``capabilities``, in process or on mesh nodes) in dependency order on the native
scheduler, keeps a task ledger and a progress ledger in the store, replans when stuck,
and resumes a job whose process died. See ``docs/orchestration.md``.
"""

from __future__ import annotations

from engine.errors import OrchestrationError, PlanError, StallError
from engine.orchestration.config import RetryPolicy
from engine.orchestration.jobs import Job, JobEvent, JobResult, JobStatus, SubtaskOutcome
from engine.orchestration.orchestrator import Orchestrator
from engine.orchestration.plans import Plan, Subtask, plan_schema, plan_type, validate_plan
from engine.orchestration.progress import ProgressReport
from engine.orchestration.prompts import Prompts
from engine.orchestration.react import ReActAgent, default_llm, set_default_llm
from engine.orchestration.retrieval import Passage, RetrievalTool
from engine.orchestration.worker import BudgetGrant, SubtaskRequest, SubtaskResult

__all__ = [
    "BudgetGrant",
    "Job",
    "JobEvent",
    "JobResult",
    "JobStatus",
    "OrchestrationError",
    "Orchestrator",
    "Passage",
    "Plan",
    "PlanError",
    "ProgressReport",
    "Prompts",
    "ReActAgent",
    "RetrievalTool",
    "RetryPolicy",
    "StallError",
    "Subtask",
    "SubtaskOutcome",
    "SubtaskRequest",
    "SubtaskResult",
    "default_llm",
    "plan_schema",
    "plan_type",
    "set_default_llm",
    "validate_plan",
]
