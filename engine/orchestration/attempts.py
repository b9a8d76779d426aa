"""Running one subtask on a worker: the request, retries, budget grants, the reply.

Every ``SubtaskRequest`` goes out through ``Runtime.send``, to an agent in this process or
on a mesh node alike. A failure is retried per the orchestrator's :class:`RetryPolicy`
(full-jitter backoff); a worker's ``BudgetExceeded`` is not retried, it fails the job. A
reply is hostile until checked: it must be a ``SubtaskResult`` or a ``str``, its output
is cut to ``MAX_OUTPUT`` characters, negative or non-finite usage counts as zero.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any

import msgspec

from engine.errors import BudgetExceeded, OrchestrationError, RemoteError
from engine.messages import AgentId
from engine.orchestration import _budget
from engine.orchestration.dispatch import Run
from engine.orchestration.ledgers import LedgerRecord, StepEntry, digest
from engine.orchestration.progress import CONTINUE
from engine.orchestration.worker import MAX_OUTPUT, SubtaskRequest, SubtaskResult

if TYPE_CHECKING:
    from engine.orchestration.execution import JobRun

__all__ = [
    "Finished",
    "attempts",
    "budget_error",
    "describe",
    "dropped_record",
    "fill",
    "step_record",
]


_NONE: list[str] = []  # no transcript


class Finished(msgspec.Struct, eq=False):
    """A finished attempt waiting to be settled (``finished``: when it was made).

    PERF: a Struct, built in C with its defaults, rather than a class whose ``__init__``
    is a Python frame of twelve stores per subtask (``eq=False``: compared by identity,
    as before).
    """

    run: Run
    agent: str
    started: float
    attempts: int
    finished: float = msgspec.field(default_factory=time.time)
    output: str = ""
    error: str = ""
    budget_error: BaseException | None = None
    tokens: int = 0
    cost: float = 0.0
    calls: int = 0
    transcript: list[str] | None = None  # None: no transcript


async def attempts(jr: JobRun, run: Run, worker: AgentId) -> None:
    """Run ``run`` on ``worker`` with retries; queue the outcome on ``jr.finished``."""
    try:
        st = run.subtask
        sid = st.id
        if jr.runs.get(sid) is not run:
            return  # cancelled (replan, stop) after it was popped
        if jr.paused:
            jr._park([run])
            return
        s = jr.s
        job = jr.job
        tried = jr.attempts
        attempt = tried.get(sid, 0) + 1
        if attempt == 1:
            verdict = jr.detector.delegated(st.capability, st.description)
            if verdict is not CONTINUE and jr.verdict is None:  # CONTINUE is the only one
                jr.verdict = verdict
        inputs = {}
        deps = st.depends_on
        if deps:  # PERF: a loop, not a comprehension (a frame of its own on 3.11)
            outputs = jr.outputs
            for d in deps:
                out = outputs.get(d)
                if out is not None:
                    inputs[d] = out
        remote = worker.type not in s.local_types
        started = time.time()
        agent = run.agent or str(worker)
        # the event's time is the attempt's start (PERF: one clock read, not two)
        job.emit_at(started, "subtask.started", sid, {"agent": agent, "attempt": attempt})
        if s.audit is not None:
            s.audit.append(
                "task.assigned",
                {"job": job.id, "subtask": sid, "agent": agent, "attempt": attempt},
            )
        runtime = s.runtime
        timeout = s.retry.timeout
        while True:
            tried[sid] = attempt
            hold = None
            grant = None
            if remote and jr.budget is not None:
                grant, hold = _budget.grant_for(jr.budget, len(jr.runs))
            req = SubtaskRequest(
                job=job.id,
                subtask=sid,
                description=st.description,
                capability=st.capability,
                task=job.task,
                inputs=inputs,
                attempt=attempt,
                tenant=job.tenant,
                grant=grant,
            )
            try:
                if s.tracer is None:  # PERF: no _send() frame on the untraced path
                    reply = await runtime.send(req, to=worker, timeout=timeout)
                else:
                    reply = await _send(jr, req, worker)
            except asyncio.CancelledError:
                if hold is not None:
                    hold.release()
                raise
            except Exception as exc:
                if hold is not None:
                    hold.release()
                done = Finished(run, agent, started, attempt)
                budget = budget_error(exc)
                done.error = describe(exc)
                if budget is not None:
                    done.budget_error = budget
                elif attempt < s.retry.attempts:
                    attempt += 1
                    await asyncio.sleep(s.retry.delay(attempt))
                    continue
                jr.finished.append(done)
                return
            done = Finished(run, agent, started, attempt)
            fill(done, reply)
            if hold is not None:
                hold.settle(done.tokens, done.cost, done.calls)
            jr.finished.append(done)
            return
    except Exception as exc:  # a bug: settled as failed, never lost (its first step may
        jr.lost(run, exc)  # run without a task, where nobody would see it raise)


async def _send(jr: JobRun, req: SubtaskRequest, worker: AgentId) -> Any:
    """``runtime.send`` inside the subtask's span (parented on the job's)."""
    s = jr.s
    assert s.tracer is not None
    with s.tracer.span(
        f"subtask {req.subtask}",
        jr.traceparent,
        kind="subtask",
        attributes={
            "engine.job": req.job,
            "engine.subtask": req.subtask,
            "engine.agent": str(worker),
        },
    ) as span:
        return await s.runtime.send(
            req, to=worker, timeout=s.retry.timeout, traceparent=span.traceparent
        )


def fill(done: Finished, reply: Any) -> None:
    """Take a worker's reply (hostile until checked) into ``done``."""
    if isinstance(reply, SubtaskResult):
        output = reply.output
        tokens, cost, calls = reply.tokens, reply.cost, reply.calls
        if tokens > 0:  # else the default 0
            done.tokens = tokens
        if isinstance(cost, float) and cost > 0 and math.isfinite(cost):  # else 0.0
            done.cost = cost
        if calls > 0:
            done.calls = calls
        if reply.transcript:
            done.transcript = [t[:MAX_OUTPUT] for t in reply.transcript[:200]]
    elif isinstance(reply, str):
        output = reply
    else:
        done.error = f"worker replied {type(reply).__name__}, not SubtaskResult or str"
        return
    if len(output) > MAX_OUTPUT:
        output = output[:MAX_OUTPUT] + f" …[{len(output) - MAX_OUTPUT} chars cut]"
    done.output = output


def budget_error(exc: BaseException) -> BaseException | None:
    """The worker's BudgetExceeded (in process: the cause; remote: by its type name)."""
    if isinstance(exc, BudgetExceeded):
        return exc
    if isinstance(exc, RemoteError):
        if isinstance(exc.__cause__, BudgetExceeded):
            return exc.__cause__
        if exc.type_name == "BudgetExceeded":
            return OrchestrationError(f"a worker's budget refused a call: {exc.message}")
    return None


def describe(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return f"{exc.type_name}: {exc.message}"[:2_000]
    return f"{type(exc).__name__}: {exc}"[:2_000]


def step_record(run: Run, done: Finished, status: str) -> LedgerRecord:
    st = run.subtask
    body = StepEntry(
        run.gen,
        st.id,
        st.capability,
        status,
        done.output,
        done.error,
        done.attempts,
        done.calls,
        done.transcript or _NONE,
    )
    return LedgerRecord(
        done.agent,
        "subtask",
        digest(st.description),
        digest(done.output or done.error),
        done.started,
        done.finished,
        done.tokens,
        done.cost,
        body,
    )


def dropped_record(run: Run, dep: str) -> LedgerRecord:
    st = run.subtask
    now = time.time()
    body = StepEntry(
        run.gen, st.id, st.capability, "failed", error=f"dependency {dep} failed", attempts=0
    )
    return LedgerRecord("orchestrator", "drop", digest(st.description), "", now, now, 0, 0.0, body)
