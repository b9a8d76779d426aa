"""One job's driver: plan, run subtasks on the scheduler, settle them in batches, replan.

The driver runs as the body of the job's runtime :class:`~engine.runtime.Query`; the
subtasks' tasks run in that query's context, so the runtime counts worker handlers as the
query's steps and holds or stops them on ``pause``/``cancel``.

A **step** is one pass of the loop: every subtask that finished since the last pass is
settled together, with one ledger append and one checkpoint for all of them (progress
reports that came back meanwhile ride along). Their dependents start while that write is
in flight; the driver waits for it before the next step, so the store receives a job's
writes in order and a dependent's record is never durable before the records it built on
(a crash loses at most unrecorded work, which resume runs again). While a step's write is
in flight, more finishes queue up for the next one: that is what keeps the store and the
progress calls off the per-subtask path.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from engine.errors import (
    BudgetExceeded,
    OrchestrationError,
    PlanError,
    QueryCancelled,
    StallError,
)
from engine.orchestration import _budget, calls
from engine.orchestration.attempts import Finished, attempts, dropped_record, step_record
from engine.orchestration.dispatch import Run
from engine.orchestration.jobs import Job, JobResult, JobStatus, SubtaskOutcome
from engine.orchestration.ledgers import (
    AnswerEntry,
    EndEntry,
    LedgerRecord,
    StepEntry,
    digest,
)
from engine.orchestration.plans import Plan, layers
from engine.orchestration.progress import StallDetector, Verdict
from engine.orchestration.state import JobCheckpoint, Restored

if TYPE_CHECKING:
    from engine.llm import Budget
    from engine.orchestration.config import Settings
    from engine.orchestration.ledgers import PlanEntry
    from engine.orchestration.plans import Subtask
    from engine.runtime import Query

__all__ = ["JobRun"]

log = logging.getLogger("engine.orchestration")


class JobRun:
    """The driver of one job in this process (an ``Owner`` for the dispatcher)."""

    def __init__(
        self,
        s: Settings,
        job: Job,
        budget: Budget | None,
        restored: Restored | None = None,
        checkpoint: JobCheckpoint | None = None,
    ) -> None:
        self.s = s
        self.job = job
        self.budget = budget
        _budget.share(job.id, budget)
        self.context = contextvars.copy_context()
        self.traceparent = ""
        self.resumed = restored is not None
        self.restored = restored or Restored()
        self.detector = StallDetector(
            max_stalls=s.max_stalls, max_replans=s.max_replans, max_repeats=s.max_repeats
        )
        self.gen = -1
        self.plan: Plan | None = None
        # the levels the plan call computed while validating ``plan`` (used once)
        self.plan_levels: tuple[Plan, list[list[int]]] | None = None
        self.facts: list[str] = []
        self.subtasks: dict[str, Subtask] = {}
        self.runs: dict[str, Run] = {}  # live in the scheduler (current gen)
        self.tasks: dict[Run, asyncio.Task[None]] = {}  # dispatched runs' tasks
        self.outputs: dict[str, str] = self.restored.outputs()
        self.failures: dict[str, SubtaskOutcome] = {}  # current gen, failed for good
        self.outcomes: dict[str, SubtaskOutcome] = {}
        self.failed_count = 0  # steps recorded as failed (the checkpoint's count)
        self.finished: list[Finished] = []
        self.noted: list[LedgerRecord] = []
        self.uncovered: list[str] = []
        self.attempts: dict[str, int] = dict(checkpoint.running) if checkpoint else {}
        self.progress_n = 1 + max((p.n for p in self.restored.progress), default=-1)
        self.progress_task: asyncio.Task[None] | None = None
        self.verdict: Verdict | None = None
        # +1 when a replan starts: a progress report begun before it judged steps of the
        # old generation, so its verdict must not stall (or replan) the new one
        self.epoch = 0
        self.replanning = False
        self.satisfied = False
        self.paused = False
        self.ending = False  # its lease is being released: the lease beat leaves it alone
        self.cancelled = False
        self.error: BaseException | None = None
        self.step = checkpoint.step if checkpoint else 0
        self.tokens = self.restored.tokens
        self.cost = self.restored.cost
        self.calls = self.restored.calls
        self.t0 = time.perf_counter()
        self._wake = asyncio.Event()
        for sid, st in self.restored.steps.items():
            self.outcomes[sid] = _outcome(st)
            self.failed_count += st.status == "failed"

    # -- accounting and records --------------------------------------------------------
    def spent(self, tokens: int, cost: float, calls: int) -> None:
        self.tokens += tokens
        self.cost += cost
        self.calls += calls

    async def record(
        self, records: Sequence[LedgerRecord] = (), end: JobResult | None = None
    ) -> None:
        """Append ``records`` (subtask steps) and the noted ones, and write the next
        checkpoint: one step; with ``end``, the job's last one, committed with its result
        and lease release.

        Only the driver calls this, one step at a time, so the store sees the job's
        writes in order.
        """
        noted, self.noted = self.noted, []
        self.step += 1
        if end is None:
            await self.s.persist.step(self.job.id, noted, self._checkpoint(), records)
        else:
            await self.s.persist.end(self.job.id, [*noted, *records], self._checkpoint(), end)

    def note(self, records: Sequence[LedgerRecord]) -> None:
        """Queue records for the driver's next step (progress calls finish off the driver)."""
        self.noted.extend(records)
        self.wake()

    def _checkpoint(self) -> JobCheckpoint:
        runs = self.runs
        running = {
            r.subtask.id: self.attempts.get(r.subtask.id, 1)
            for r in self.tasks
            if runs.get(r.subtask.id) is r
        }
        return JobCheckpoint(
            step=self.step,
            status=self.job.status.value,
            gen=self.gen,
            replans=self.detector.replans,
            stalls=self.detector.stalls,
            completed=len(self.outputs),
            failed=self.failed_count,
            progress_calls=self.progress_n,
            tokens=self.tokens,
            cost=self.cost,
            calls=self.calls,
            running=running,
        )

    def restored_plan_call(self, gen: int, attempt: int) -> PlanEntry | None:
        return self.restored.plan_calls.get((gen, attempt))

    def wake(self) -> None:
        self._wake.set()

    # -- the driver (the job query's body) ---------------------------------------------
    async def drive(self, query: Query) -> JobResult:
        self.context = contextvars.copy_context()  # holds current_query = query
        if self.s.tracer is not None:
            with self.s.tracer.span(
                f"job {self.job.id}", kind="task", attributes={"engine.job": self.job.id}
            ) as span:
                self.traceparent = span.traceparent
                return await self._drive()
        return await self._drive()

    async def _drive(self) -> JobResult:
        job = self.job
        job.status = JobStatus.RUNNING
        try:
            if self.resumed:
                await self.s.persist.status(job.id, "running")
            r = self.restored
            if r.end is not None:  # ended before the crash; only the record was missing
                status = JobStatus(r.end.status)
                return await self._finish(status, "", r.end.reason, r.end.error)
            if r.answer is not None:
                return await self._finish(JobStatus.COMPLETED, r.answer.answer)
            if r.gen >= 0:
                self._adopt(r.gen, r.plans[r.gen], r.reasons.get(r.gen, ""))
            else:
                await self._new_plan(0, "")
            answer = await self._loop()
            return await self._finish(JobStatus.COMPLETED, answer)
        except (QueryCancelled, asyncio.CancelledError):
            self._halt()
            if self.cancelled:
                await self._finish(JobStatus.CANCELLED, "", "cancelled", "")
                raise QueryCancelled(f"job {job.id} was cancelled") from None
            raise
        except (BudgetExceeded, PlanError, StallError, OrchestrationError) as exc:
            self._halt()
            return await self._finish(JobStatus.FAILED, "", str(exc), type(exc).__name__)
        except Exception as exc:
            self._halt()
            log.exception("job %s failed", job.id)
            return await self._finish(
                JobStatus.FAILED, "", f"{type(exc).__name__}: {exc}", type(exc).__name__
            )
        finally:
            _budget.share(job.id, None)

    async def _loop(self) -> str:
        while True:
            if self.cancelled:
                raise QueryCancelled(f"job {self.job.id} was cancelled")
            if self.error is not None:
                raise self.error
            if self.finished:
                await self._settle()
                continue
            verdict, self.verdict = self.verdict, None
            if verdict is not None and verdict.action == "fail":
                raise StallError(verdict.why)
            if verdict is not None and verdict.action == "replan":
                await self._replan(verdict.why)
                continue
            if self.satisfied and self.runs:
                self._stop_runs()  # the model says the request is satisfied: stop early
                continue
            if not self.runs and not self.tasks and not self.paused:
                if self.uncovered and self.progress_task is None:
                    self._start_progress()
                if self.progress_task is None and not self.finished:
                    if self.failures and not self.satisfied:
                        why = "; ".join(
                            f"{sid}: {o.error}" for sid, o in list(self.failures.items())[:5]
                        )
                        self.verdict = self.detector.failed(f"subtasks failed ({why})")
                        continue
                    return await self._answer()
            elif self.uncovered and self.progress_task is None:
                self._start_progress()
            self._wake.clear()
            await self._wake.wait()

    # -- plans -------------------------------------------------------------------------
    async def _new_plan(self, gen: int, why: str) -> None:
        plan = await calls.plan(self, gen, why)
        self._adopt(gen, plan, why)

    def _adopt(self, gen: int, plan: Plan, why: str) -> None:
        first = self.gen < 0
        self.gen = gen
        self.plan = plan
        self.facts = list(plan.facts)
        self.subtasks = {st.id: st for st in plan.subtasks}
        self.failures = {}
        self.detector.replans = max(self.detector.replans, gen)
        done = self.restored.gen_steps.get(gen, {})
        for sid, st in done.items():  # a resumed generation: settled steps stay settled
            if st.status == "failed" and sid in self.subtasks:
                self.failures[sid] = _outcome(st)
        covered = self.restored.covered()
        self.uncovered = [f"{gen}:{sid}" for sid in done if f"{gen}:{sid}" not in covered]
        kind = "planned" if first else "replanned"
        self.job.emit(kind, data={"gen": gen, "subtasks": len(plan.subtasks), "why": why})
        self._push_pending()

    async def _replan(self, why: str) -> None:
        self.epoch += 1
        self.replanning = True  # what settles now is judged after the replan, not during it
        try:
            self._stop_runs()
            while self.finished or self.tasks:  # settle what finished before the stop
                if self.finished:
                    await self._settle()
                else:
                    self._wake.clear()
                    await self._wake.wait()
            self.detector.replanned()
            await self._new_plan(self.gen + 1, why)
        finally:
            self.replanning = False

    def _pending(self) -> list[Subtask]:
        """Subtasks of the plan neither settled nor live in the scheduler."""
        runs, failures, outputs = self.runs, self.failures, self.outputs
        if not (runs or failures or outputs):  # PERF: a first plan, no test per subtask
            return list(self.subtasks.values())
        return [
            st
            for sid, st in self.subtasks.items()
            if sid not in runs and sid not in failures and sid not in outputs
        ]

    def _push_pending(self) -> None:
        """Push the plan's pending subtasks (first plan, resume, replan, un-pause).

        Dependencies on subtasks still live in the scheduler wait for them; on completed
        ones are met; on failed ones fail the subtask at once (settled with the next step).
        """
        if self.paused or self.cancelled:
            return
        pending = self._pending()
        if not pending:
            self.wake()
            return
        known, self.plan_levels = self.plan_levels, None
        if known is not None and known[0] is self.plan and len(pending) == len(self.subtasks):
            subs = known[0].subtasks  # a new plan, nothing of it settled: as validated
            order = list(map(subs.__getitem__, itertools.chain.from_iterable(known[1])))
        else:
            ids = {st.id for st in pending}
            met = set(self.subtasks) - ids
            order = [st for layer in layers(Plan(subtasks=pending), done=met) for st in layer]
        d = self.s.dispatcher
        base = d.next_id
        index: dict[str, int] = {}
        batch: list[Run] = []
        gen = self.gen
        failures = self.failures
        live = self.runs
        for st in order:
            deps = st.depends_on
            if failures and deps:
                bad = next((dep for dep in deps if dep in failures), None)
                if bad is not None:
                    run = Run(self, st, gen, st.capability, st.priority)
                    done = Finished(run, "", time.time(), 0)
                    done.error = f"dependency {bad} failed"
                    failures[st.id] = SubtaskOutcome(
                        st.id, st.capability, "failed", error=done.error
                    )
                    self.finished.append(done)
                    continue
            run = Run(self, st, gen, st.capability, st.priority)
            index[st.id] = base + len(batch)
            if deps:
                tids: list[int] = []
                for dep in deps:  # PERF: a loop, not a generator per subtask
                    i = index.get(dep)
                    if i is None:
                        other = live.get(dep)
                        if other is None:
                            continue  # completed: met
                        i = other.tid
                    tids.append(i)
                run.deps = tuple(tids)
            batch.append(run)
            live[st.id] = run  # a later subtask finds it in ``index`` first
        d.push(batch, self.job.tenant, self.job.priority)
        tm = self.s.task_metrics
        if tm is not None:
            tm.submitted(len(batch))
        self.wake()

    def _halt(self) -> None:
        """The job ends here: no subtask and no progress call keeps running."""
        self._stop_runs()
        if self.progress_task is not None:
            self.progress_task.cancel()

    def _stop_runs(self) -> None:
        """Take every live run of this job off the scheduler and cancel running attempts."""
        if self.runs:
            self.s.dispatcher.cancel(list(self.runs.values()))
            self.runs.clear()
        for task in list(self.tasks.values()):
            task.cancel()

    # -- control (from the Job handle) -------------------------------------------------
    def control(self, action: str) -> None:
        q = self.job.query
        if action == "cancel":
            self.cancelled = True
            if q is not None and not q.state.terminal:
                q.cancel()
            self._stop_runs()
            self.wake()
        elif action == "pause":
            if q is not None:
                q.pause()
            self.paused = True
            self.job.status = JobStatus.PAUSED
            self._park([r for r in self.runs.values() if r not in self.tasks])
            self.job.emit("paused")
        elif action == "resume":
            if q is not None:
                q.resume()
            self.paused = False
            self.job.status = JobStatus.RUNNING
            self.job.emit("resumed")
            self._push_pending()
            self.wake()

    def _park(self, runs: list[Run]) -> None:
        """Take runs (and their dependents) off the scheduler until resume."""
        for run in self.s.dispatcher.cancel(runs):
            if self.runs.get(run.subtask.id) is run:
                del self.runs[run.subtask.id]
        self.wake()

    # -- running one subtask (the dispatcher calls this in a task) ---------------------
    #: Run one subtask: ``self.execute(run, worker)`` is ``attempts(self, run, worker)``
    #: (PERF: the function itself as the method, no frame of its own per subtask)
    execute = attempts

    def started(self, run: Run, task: asyncio.Task[None]) -> None:
        self.tasks[run] = task

    def ended(self, run: Run, task: asyncio.Task[None] | None) -> None:
        if task is None:  # it finished in its first step (attempts() settles its own bugs)
            self._wake.set()  # self.wake(), one frame less per subtask
            return
        self.tasks.pop(run, None)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:  # attempts() must not raise: settle the run anyway
                self.lost(run, exc)
        self.wake()

    def lost(self, run: Run, exc: BaseException) -> None:
        done = Finished(run, "", time.time(), self.attempts.get(run.subtask.id, 1))
        done.error = f"internal error: {type(exc).__name__}: {exc}"
        self.finished.append(done)
        self.wake()

    # -- settling a batch of finished subtasks (one step) ------------------------------
    async def _settle(self) -> None:
        batch, self.finished = self.finished, []
        d = self.s.dispatcher
        ok: list[Run] = []
        records: list[LedgerRecord] = []
        events: list[tuple[str, dict[str, Any]]] = []  # their "subtask.finished" events
        seconds: list[float] | None = [] if self.s.metrics is not None else None
        gen = self.gen
        runs, outputs, outcomes = self.runs, self.outputs, self.outcomes
        attempts, uncovered = self.attempts, self.uncovered
        live_runs = d.live_runs
        tokens, cost, failed = 0, 0.0, 0
        for done in batch:
            run = done.run
            st = run.subtask
            sid = st.id
            live = run.tid in live_runs
            attempts.pop(sid, None)
            if done.budget_error is not None and self.error is None:
                self.error = done.budget_error
            error = done.error
            status = "failed" if error else "completed"
            agent, t = done.agent, done.tokens
            outcome = SubtaskOutcome(
                sid, st.capability, status, done.output, error, agent, done.attempts, t, done.cost
            )
            records.append(step_record(run, done, status))
            outcomes[sid] = outcome
            events.append((sid, {"status": status, "agent": agent, "tokens": t, "error": error}))
            if seconds is not None:
                seconds.append(done.finished - done.started)
            tokens += t
            cost += done.cost
            uncovered.append(f"{run.gen}:{sid}")
            if not error:
                outputs[sid] = done.output
                if live:
                    ok.append(run)
            else:
                failed += 1
                if live:
                    for dropped in d.fail(run):
                        ds = dropped.subtask
                        runs.pop(ds.id, None)
                        miss = SubtaskOutcome(
                            ds.id, ds.capability, "failed", error=f"dependency {sid} failed"
                        )
                        outcomes[ds.id] = miss
                        failed += 1
                        if dropped.gen == gen:
                            self.failures[ds.id] = miss
                        records.append(dropped_record(dropped, sid))
                if run.gen == gen:
                    self.failures[sid] = outcome
            if run.gen == gen and runs.get(sid) is run:
                del runs[sid]
        self.failed_count += failed
        self.spent(tokens, cost, 0)
        # Dependents become ready now and start while the step's write is in flight (the
        # scheduler pops them at the loop's next turn; the write is issued before this task
        # yields). Writes are ordered (one step at a time), so a dependent's record can
        # never be durable before the records it built on.
        d.complete(ok)
        await self.record(records)
        self._after_step(events, seconds)  # "subtask.finished" means recorded

    def _after_step(
        self, events: list[tuple[str, dict[str, Any]]], seconds: list[float] | None
    ) -> None:
        s = self.s
        job = self.job
        audit = s.audit
        job.emit_each(time.time(), "subtask.finished", events)
        if audit is not None:  # (read before any subscriber runs)
            for sid, e in events:
                audit.append(
                    "task.completed",
                    {"job": job.id, "subtask": sid, "status": e["status"], "agent": e["agent"]},
                )
        if s.metrics is not None and seconds is not None:
            for (_, e), took in zip(events, seconds, strict=True):
                status = "ok" if e["status"] == "completed" else "error"
                s.metrics.task_finished(status, max(0.0, took))
        job.emit("tokens", data={"tokens": self.tokens, "cost": self.cost})
        if self.uncovered and self.progress_task is None and not self.replanning:
            self._start_progress()

    # -- progress ----------------------------------------------------------------------
    def _start_progress(self) -> None:
        keys = self.uncovered[: self.s.progress_batch]
        del self.uncovered[: len(keys)]
        self.progress_task = asyncio.get_running_loop().create_task(
            calls.progress_step(self, keys, self.epoch), context=self.context
        )

    # -- the end -----------------------------------------------------------------------
    async def _answer(self) -> str:
        recorded = self.restored.answer
        if recorded is not None and recorded.gen == self.gen:
            return recorded.answer
        outputs = self.outputs
        results = {sid: outputs[sid] for sid in self.subtasks if sid in outputs}
        if len(results) < len(outputs):  # then those of earlier generations
            for sid in outputs:
                results.setdefault(sid, outputs[sid])
        ans = await calls.summarize(self, results)
        self.note([ans.record("summarize", AnswerEntry(self.gen, ans.text), ans.text)])
        return ans.text  # recorded by _finish, in the job's last step

    async def _finish(
        self, status: JobStatus, answer: str, reason: str = "", error: str = ""
    ) -> JobResult:
        job = self.job
        if status is not JobStatus.COMPLETED and self.restored.end is None:
            now = time.time()
            body = EndEntry(status.value, reason, error)
            rec = LedgerRecord("orchestrator", "end", "", digest(reason), now, now, 0, 0.0, body)
            self.note([rec])
        job.status = status
        result = JobResult(
            answer=answer,
            status=status,
            subtasks=list(self.outcomes.values()),
            tokens=self.tokens,
            cost=self.cost,
            duration=time.perf_counter() - self.t0,
            job=job.id,
            reason=reason,
            error=error,
            replans=self.detector.replans,
        )
        # The last step: its records, the final status and result, the lease released,
        # in one transaction.
        self.ending = True
        await self.record(end=result)
        job._finish(result)
        return result


def _outcome(st: StepEntry) -> SubtaskOutcome:
    return SubtaskOutcome(
        st.subtask, st.capability, st.status, st.output, st.error, attempts=st.attempts
    )
