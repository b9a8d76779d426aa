"""The orchestrator: submit a task, get a job that plans, runs, watches and answers.

.. code-block:: python

    orch = Orchestrator(llm, runtime, store=store)
    orch.add_worker(Researcher, concurrency=8)          # an Agent declaring capabilities
    job = await orch.submit("compare X and Y", tenant="acme", budget=Budget(tokens=50_000))
    async for event in job.events(): ...
    result = await job.result()

One orchestrator serves many jobs at once on one native scheduler (pools per capability,
fairness across tenants). Each job holds a lease on its store record, renewed in the
background; another orchestrator sharing the store takes a job over once its lease
expires (:meth:`Orchestrator.take_over`), and :meth:`Orchestrator.resume` continues a job
whose process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from engine.agents import Agent
from engine.errors import InvalidTransition, JobNotFound, LeaseLost, OrchestrationError
from engine.orchestration._metrics import TaskMetrics
from engine.orchestration.config import RetryPolicy, Settings
from engine.orchestration.dispatch import Dispatcher
from engine.orchestration.execution import JobRun
from engine.orchestration.jobs import Job, JobStatus
from engine.orchestration.persist import Persist
from engine.orchestration.plans import MAX_SUBTASKS
from engine.orchestration.progress import MAX_BATCH
from engine.orchestration.prompts import Prompts
from engine.orchestration.state import JobSpec, Limits, restore
from engine.orchestration.worker import capabilities_of

if TYPE_CHECKING:
    from engine.llm import Budget
    from engine.observe.audit import AuditLog
    from engine.observe.metrics import Metrics
    from engine.observe.tracing import Tracer
    from engine.runtime import Runtime
    from engine.store import Store

__all__ = ["Orchestrator"]

log = logging.getLogger("engine.orchestration")


class Orchestrator:
    """Plans tasks with ``llm`` and runs their subtasks on workers of ``runtime``.

    ``store`` (a :class:`engine.store.Store`, or a URL; default ``memory://``) keeps jobs,
    ledgers and checkpoints. ``max_subtasks`` bounds a plan; ``retry`` is the subtask retry
    policy; ``max_stalls`` progress reports without progress (or one repeated delegation)
    trigger a replan, at most ``max_replans`` times; ``progress_batch`` bounds the steps
    one progress call covers. ``lease`` (seconds) is how long a job stays ours without a
    heartbeat; with ``takeover`` this orchestrator also claims, at every heartbeat, the
    jobs whose runner's lease expired (give it the same workers). ``tracer``, ``metrics``
    and ``audit`` are optional observability sinks.
    """

    def __init__(
        self,
        llm: Any,
        runtime: Runtime,
        *,
        store: Store | str | None = None,
        max_subtasks: int = MAX_SUBTASKS,
        retry: RetryPolicy | None = None,
        max_stalls: int = 3,
        max_replans: int = 2,
        max_repeats: int = 3,
        progress_batch: int = MAX_BATCH,
        lease: float = 30.0,
        prompts: Prompts | None = None,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
        owner: str | None = None,
        takeover: bool = False,
    ) -> None:
        if not hasattr(llm, "chat"):
            raise TypeError(
                f"llm must offer chat() (an engine.llm provider or router), got {llm!r}"
            )
        if not isinstance(max_subtasks, int) or not 1 <= max_subtasks <= 100_000:
            raise ValueError(f"max_subtasks must be an int in 1..100000, got {max_subtasks!r}")
        if not isinstance(progress_batch, int) or progress_batch < 1:
            raise ValueError(f"progress_batch must be an int >= 1, got {progress_batch!r}")
        if not lease > 0:
            raise ValueError(f"lease must be > 0 seconds, got {lease!r}")
        self.llm = llm
        self.runtime = runtime
        self.owner = (
            owner or f"orchestrator@{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        )
        self._store_arg = store
        self._store: Store | None = (
            store if store is not None and not isinstance(store, str) else None
        )
        self._owns_store = False
        self.dispatcher = Dispatcher()
        self.lease = float(lease)
        self.s = Settings(
            llm=llm,
            runtime=runtime,
            persist=None,  # type: ignore[arg-type]  # set by _open()
            dispatcher=self.dispatcher,
            prompts=prompts or Prompts(),
            retry=retry or RetryPolicy(),
            max_subtasks=max_subtasks,
            max_stalls=max_stalls,
            max_replans=max_replans,
            max_repeats=max_repeats,
            progress_batch=progress_batch,
            tracer=tracer,
            metrics=metrics,
            task_metrics=TaskMetrics.on(metrics, self.dispatcher) if metrics is not None else None,
            audit=audit,
        )
        self.jobs: dict[str, Job] = {}  # live in this process
        self._runs: dict[str, JobRun] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed = False
        self.takeover = takeover

    # -- configuration -------------------------------------------------------------
    def add_worker(
        self,
        worker: type[Agent] | str,
        *,
        capabilities: Iterable[str] | None = None,
        concurrency: int = 16,
        description: str = "",
    ) -> None:
        """Offer ``worker``'s capabilities to plans, with ``concurrency`` subtasks at once.

        ``worker`` is an :class:`Agent` subclass declaring ``capabilities`` (registered on
        the runtime under its ``type_name`` unless already there) or the type name of
        workers hosted elsewhere, on mesh nodes (then pass ``capabilities``). Either way
        subtasks reach it through ``runtime.send``.
        """
        if isinstance(worker, str):
            if capabilities is None:
                raise TypeError(f"remote worker type {worker!r} needs capabilities=[...]")
            caps = tuple(capabilities)
            type_name = worker
        elif isinstance(worker, type) and issubclass(worker, Agent):
            caps = tuple(capabilities) if capabilities is not None else capabilities_of(worker)
            type_name = worker.type_name
            if type_name not in self.runtime.types:
                self.runtime.register(type_name, worker)
        else:
            raise TypeError(f"worker must be an Agent subclass or a type name, got {worker!r}")
        for cap in caps:
            if not isinstance(cap, str) or not cap or len(cap) > 128:
                raise ValueError(f"capability names are non-empty str up to 128 chars: {cap!r}")
        self.dispatcher.add_worker(type_name, caps, concurrency)
        if type_name in self.runtime.types:
            self.s.local_types.add(type_name)
        about = description or (worker.__doc__ or "" if not isinstance(worker, str) else "")
        for cap in caps:
            self.s.descriptions.setdefault(cap, about.strip().split("\n")[0][:200])

    def set_tenant_weight(self, tenant: str, weight: int) -> None:
        """``tenant`` gets ``weight`` dispatches per fair-share round (default 1)."""
        self.dispatcher.set_weight(tenant, weight)

    @property
    def capabilities(self) -> list[str]:
        return self.dispatcher.capabilities

    # -- lifecycle -----------------------------------------------------------------
    async def _open(self) -> Persist:
        if self._closed:
            raise OrchestrationError("orchestrator is closed")
        if self.s.persist is None:
            if self._store is None:
                from engine.store import open as open_store

                url = self._store_arg if isinstance(self._store_arg, str) else "memory://"
                self._store = await open_store(url)
                self._owns_store = True
            self.s.persist = Persist(self._store, self.owner, self.lease)
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
        return self.s.persist

    @property
    def store(self) -> Store | None:
        return self._store

    async def close(self) -> None:
        """Stop the jobs running here and release their leases: they stay resumable
        (:meth:`resume`, ``engine resume``) from where their ledgers stand."""
        if self._closed:
            return
        self._closed = True
        # Let queries started just now take their first step: the runtime's Query only
        # resolves wait() once its task ran (a task cancelled before it starts never does).
        await asyncio.sleep(0)
        runs = list(self._runs.values())
        for run in runs:
            q = run.job.query
            if q is not None and not q.state.terminal:
                q.terminate()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        waits = [r.job.query.wait() for r in runs if r.job.query is not None]
        await asyncio.gather(*waits, return_exceptions=True)
        persist = self.s.persist
        for run in runs:
            if persist is not None and not run.job.done:
                with contextlib.suppress(Exception):
                    await persist.release(run.job.id)
                run.job._abort(
                    OrchestrationError(
                        f"job {run.job.id} was stopped by Orchestrator.close(); "
                        "resume it with Orchestrator.resume() or engine resume"
                    )
                )
        if self._owns_store and self._store is not None:
            await self._store.close()

    async def __aenter__(self) -> Orchestrator:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- jobs ----------------------------------------------------------------------
    async def submit(
        self,
        task: str,
        *,
        tenant: str = "default",
        budget: Budget | None = None,
        priority: int = 0,
        job_id: str | None = None,
        config: dict[str, str] | None = None,
    ) -> Job:
        """Start a job for ``task``; returns its :class:`Job` at once.

        ``budget`` (an ``engine.llm.Budget``) bounds every model call of the job, the
        orchestrator's and its workers'. ``priority`` orders this job's subtasks against
        other jobs of the same tenant (lower first). ``config`` is kept with the job (the
        CLI stores how to rebuild the orchestrator for ``engine resume``).
        """
        if not isinstance(task, str) or not task.strip():
            raise ValueError("task must be a non-empty str")
        if len(task) > 100_000:
            raise ValueError(f"task is {len(task)} chars, the limit is 100000")
        if not isinstance(tenant, str) or not tenant or len(tenant) > 256:
            raise ValueError(f"tenant must be a non-empty str up to 256 chars, got {tenant!r}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"priority must be an int, got {priority!r}")
        if not self.dispatcher.capabilities:
            raise OrchestrationError("no workers: add_worker() before submitting jobs")
        persist = await self._open()
        job_id = job_id or os.urandom(8).hex()
        limits = None
        if budget is not None:
            limits = Limits(budget.tokens, budget.cost, budget.calls)
        spec = JobSpec(task=task, budget=limits, config=dict(config or {}))
        await persist.create(job_id, spec, tenant, priority)
        return self._start(job_id, spec, tenant, priority, budget, None)

    async def resume(self, job_id: str, *, force: bool = False) -> Job:
        """Continue job ``job_id`` from the store (its process died, or it was closed).

        Completed subtasks are not run again and recorded model calls are not repeated;
        subtasks that were running when it stopped run again. A finished job's handle
        returns its stored result. Raises ``JobNotFound``, or :class:`OrchestrationError`
        while another orchestrator holds a live lease on it, unless that orchestrator ran
        on this host and its process is gone, or ``force`` (you know it is dead).
        """
        if job_id in self.jobs:
            return self.jobs[job_id]
        persist = await self._open()
        record = await persist.get(job_id)
        if record is None:
            raise JobNotFound(f"no job {job_id!r} in {getattr(self._store, 'url', 'the store')}")
        spec = persist.spec(record)
        stored = persist.result(record)
        if stored is not None and JobStatus(record.status).final:
            job = Job(
                job_id,
                spec.task,
                tenant=record.tenant,
                priority=record.priority,
                control=self._control,
            )
            job._finish(stored)
            return job
        if not await persist.acquire(job_id) and (
            not (force or _dead_here(record.owner))
            or not await persist.release_other(job_id, record.owner)
            or not await persist.acquire(job_id)
        ):
            raise OrchestrationError(
                f"job {job_id} is leased by {record.owner!r} until {record.lease_until:.0f}; "
                "it is still running elsewhere (or wait for its lease to expire)"
            )
        return await self._restart(record, spec)

    async def take_over(self, limit: int = 1) -> list[Job]:
        """Resume up to ``limit`` jobs whose runner's lease expired (another process died)."""
        persist = await self._open()
        out: list[Job] = []
        while len(out) < limit:
            record = await persist.claim()
            if record is None:
                break
            try:
                out.append(await self._restart(record, persist.spec(record)))
            except OrchestrationError as exc:  # released again: not ours to run
                log.warning("not taking over job %s: %s", record.id, exc)
                break  # claiming again would hand us the same job
        return out

    async def _restart(self, record: Any, spec: JobSpec) -> Job:
        persist = self.s.persist
        restored = restore(await persist.records(record.id))
        checkpoint = await persist.last_checkpoint(record.id)
        plan = restored.plans.get(restored.gen)
        if plan is not None and restored.answer is None and restored.end is None:
            missing = sorted({st.capability for st in plan.subtasks} - set(self.capabilities))
            if missing:
                await persist.release(record.id)
                raise OrchestrationError(
                    f"job {record.id} needs capabilities no worker here offers: "
                    + ", ".join(missing)
                )
        budget = None
        if spec.budget is not None:
            from engine.llm import Budget

            lim = spec.budget
            budget = Budget(
                tokens=lim.tokens, cost=lim.cost, calls=lim.calls, name=f"job:{record.id}"
            )
            budget.used_tokens = restored.tokens
            budget.used_cost = restored.cost
            budget.used_calls = restored.calls
        return self._start(
            record.id, spec, record.tenant, record.priority, budget, (restored, checkpoint)
        )

    def _start(
        self,
        job_id: str,
        spec: JobSpec,
        tenant: str,
        priority: int,
        budget: Budget | None,
        resumed: tuple[Any, Any] | None,
    ) -> Job:
        job = Job(job_id, spec.task, tenant=tenant, priority=priority, control=self._control)
        restored, checkpoint = resumed if resumed is not None else (None, None)
        run = JobRun(self.s, job, budget, restored, checkpoint)
        self.jobs[job_id] = job
        self._runs[job_id] = run
        q = self.runtime.start_query(run.drive, name=f"job:{job_id}")
        job.query = q
        q.add_listener(lambda _q, state: self._ended(job_id) if state.terminal else None)
        return job

    def _ended(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self._runs.pop(job_id, None)

    def _control(self, job: Job, action: str) -> None:
        run = self._runs.get(job.id)
        if run is None:
            raise InvalidTransition(f"job {job.id} is not running in this orchestrator")
        run.control(action)

    async def _beat(self) -> None:
        """Renew the leases of the jobs running here; drop a job whose lease was taken."""
        while True:
            await asyncio.sleep(self.lease / 3)
            persist = self.s.persist
            for job_id, run in list(self._runs.items()):
                if run.ending:
                    continue
                try:
                    await persist.heartbeat(job_id)
                except (LeaseLost, JobNotFound) as exc:
                    if run.ending:  # released while the beat was on its way: not lost
                        continue
                    log.warning("job %s: lease lost (%s); stopping it here", job_id, exc)
                    q = run.job.query
                    if q is not None and not q.state.terminal:
                        q.terminate()
                    run.job._abort(
                        OrchestrationError(f"job {job_id}: lease lost to another orchestrator")
                    )
                except Exception:  # the store hiccuped: try again next beat
                    log.exception("job %s: heartbeat failed", job_id)
            if self.takeover:
                try:
                    for job in await self.take_over(limit=16):
                        log.warning("took over job %s (its runner's lease expired)", job.id)
                except Exception:
                    log.exception("taking over expired jobs failed")


def _nonce() -> str:
    return os.urandom(4).hex()


def _dead_here(owner: str) -> bool:
    """Whether ``owner`` names an orchestrator of this host whose process has exited."""
    _, at, rest = owner.partition("@")
    host, _, pid = rest.partition(":")
    pid = pid.partition(":")[0]
    if not at or host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False
