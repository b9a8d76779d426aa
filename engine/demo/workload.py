"""One demo run: set up, submit the jobs, watch them, stop everything, report.

:class:`Demo` owns everything it starts and stops all of it on every way out (completion,
an error, a cancellation such as Ctrl-C): the orchestrator, the runtime, the model's HTTP
client, the child processes, the profiler, the store and the audit log. Its
:meth:`Demo.report` can be read at any time, so an interrupted run still reports what
finished. Everything the run leaves behind is in the output directory (:class:`Outputs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any, Final

import msgspec

from engine.demo.corpus import Corpus, load_corpus
from engine.demo.procs import Child, ChildError, Processes
from engine.demo.questions import Question, questions
from engine.demo.roles import ROLES
from engine.demo.stats import JobLog, LLMFigures, executed, llm_figures, samples, scrape

__all__ = ["Demo", "Options", "Outputs", "Progress"]

#: Tenants the jobs alternate between (the scheduler serves them fairly).
TENANTS: Final = ("docs-team", "support")
#: Longest a job may take before it counts as lost.
JOB_TIMEOUT: Final = 300.0
#: Chaos: the first node is killed once this share of the jobs finished.
KILL_AT: Final = 0.4


class Options(msgspec.Struct, kw_only=True):
    """How to run the demo (the ``engine demo`` flags)."""

    jobs: int = 300
    nodes: int = 2
    in_process: bool = False
    chaos: bool = False
    model: str | None = None
    out: str = "demo-output"
    seed: int = 7
    in_flight: int = 32
    concurrency: int = 16


class Outputs:
    """Files of one run under ``root``; :meth:`clear` removes a previous run's, no other."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = root / "jobs.db"
        self.mesh = root / "mesh.db"
        self.audit = root / "audit.log"
        self.broker_audit = root / "broker-audit.log"
        self.metrics = root / "metrics"
        self.logs = root / "logs"
        self.profile = root / "profile.speedscope.json"
        self.summary = root / "summary.json"
        self.corpus = root / "corpus.json"  # scratch: read by the nodes, removed at the end

    def clear(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for db in (self.store, self.mesh):
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        for f in (self.audit, self.broker_audit, self.profile, self.summary, self.corpus):
            f.unlink(missing_ok=True)
        for d in (self.metrics, self.logs):
            if d.is_dir():
                for f in d.glob("*.prom" if d == self.metrics else "*.log"):
                    f.unlink()


class Progress:
    """Live counters (read by the display while the run goes on)."""

    def __init__(self, total: int, model: str, mode: str) -> None:
        self.total = total
        self.model = model
        self.mode = mode
        self.jobs = JobLog(total)
        self.started = time.monotonic()
        self.ended: float | None = None
        self.llm = LLMFigures()
        self.nodes: dict[str, int] = {}
        self.events: list[str] = []

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def event(self, text: str) -> None:
        self.events.append(f"{self.elapsed:6.1f}s  {text}")


class Demo:
    """See the module docs. ``view`` is told when to show what (see ``display.View``)."""

    def __init__(self, opts: Options, view: Any) -> None:
        if opts.jobs < 1 or opts.nodes < 1 or opts.in_flight < 1 or opts.concurrency < 1:
            raise ValueError("--jobs, --nodes, --in-flight and --concurrency must be >= 1")
        self.opts = opts
        self.view = view
        self.out = Outputs(Path(opts.out).resolve())
        self.corpus: Corpus | None = None
        self.questions: list[Question] = []
        self.procs: Processes | None = None
        self.progress: Progress | None = None
        self.metrics: Any = None
        self.model: Any = None
        self.remote: dict[str, tuple[Child, Any]] = {}  # name -> (child, its last metrics)
        self._scrape_locks: dict[str, asyncio.Lock] = {}
        self.chaos: dict[str, Any] = {}
        self._chaos: asyncio.Future[None] | None = None
        self.store_counts: dict[str, int] = {}
        self.audit_records = 0
        self.refusals = 0
        self.profile_samples = 0
        self.interrupted = False
        self.error = ""
        self.runtime_url: str | None = None
        self.orch: Any = None

    # -- the run -------------------------------------------------------------------------
    async def run(self) -> None:
        from engine.demo.model import demo_model
        from engine.observe.audit import AuditLog
        from engine.observe.metrics import Metrics
        from engine.observe.sampler import Sampler
        from engine.store import open as open_store

        opts, out = self.opts, self.out
        out.clear()
        self.corpus = corpus = load_corpus()
        self.questions = questions(corpus, opts.jobs, seed=opts.seed, gap=2 * opts.in_flight)
        self.metrics = Metrics()
        audit = AuditLog(out.audit)
        self.model = demo_model(opts.model, metrics=self.metrics, audit=audit)
        mode = "in process" if opts.in_process else f"broker + {opts.nodes} nodes"
        self.progress = progress = Progress(opts.jobs, self.model.describe(), mode)
        store: Any = None
        sampler: Sampler | None = None
        try:
            store = await open_store(f"sqlite:///{out.store}")
            if not opts.in_process:
                await self._start_processes(corpus)
            sampler = Sampler(hz=50).start()
            await self._orchestrate(store, audit)
        except asyncio.CancelledError:
            self.interrupted = True
            raise
        except ChildError as exc:  # a start failed (a death midway sets it in _watch)
            self.error = self.error or str(exc)
            raise
        finally:
            progress.ended = progress.ended or time.monotonic()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._scrape_all(), 5.0)
            if store is not None:
                with contextlib.suppress(Exception):
                    await self._count_store(store)
            self.view.stop()
            if sampler is not None:
                self._write_profile(sampler)
            await self._shutdown(store, audit)

    async def _start_processes(self, corpus: Corpus) -> None:
        from engine.demo.model import model_name

        corpus.save(self.out.corpus)
        env = {
            "ENGINE_DEMO_CORPUS": str(self.out.corpus),
            "ENGINE_MODEL": model_name(self.opts.model),
        }
        self.procs = procs = Processes(self.out.logs, env={**os.environ, **env})
        try:
            await procs.start_broker(f"sqlite:///{self.out.mesh}", self.out.broker_audit)
            names = [f"node-{i + 1}" for i in range(self.opts.nodes)]
            started = await asyncio.gather(
                *(procs.start_node(n, {}) for n in names), return_exceptions=True
            )  # every start ends (ready or failed) before the run goes on or stops them all
        finally:
            for c in procs.children:  # reported even when a start failed
                self.remote[c.name] = (c, None)
        for r in started:
            if isinstance(r, BaseException):
                raise r

    async def _orchestrate(self, store: Any, audit: Any) -> None:
        from engine.orchestration import Orchestrator, RetryPolicy
        from engine.runtime import Runtime

        progress = self.progress
        assert progress is not None
        mesh = None if self.procs is None else self.procs.broker.endpoint  # type: ignore[union-attr]
        async with Runtime(mesh=mesh, metrics=self.metrics, metrics_port=0) as rt:
            self.runtime_url = rt.metrics_url
            retry = RetryPolicy(attempts=2, backoff=0.05, timeout=60.0)
            orch = Orchestrator(
                self.model,
                rt,
                store=store,
                retry=retry,
                metrics=self.metrics,
                audit=audit,
            )
            self.orch = orch
            try:
                self._add_workers(orch)
                progress.started = time.monotonic()  # the jobs' time, after the set-up
                self.view.start(progress)
                driver = asyncio.ensure_future(self._submit_all(orch))
                watcher = asyncio.ensure_future(self._watch(driver))
                try:
                    await driver
                except asyncio.CancelledError:
                    if self.error:
                        raise ChildError(self.error) from None
                    raise
                finally:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                progress.ended = time.monotonic()
            finally:
                await orch.close()

    def _add_workers(self, orch: Any) -> None:
        from engine.demo import workers

        if self.procs is None:
            assert self.corpus is not None
            workers.install(workers.State(self.corpus, self.model))
            for cls in workers.WORKERS:
                orch.add_worker(cls, concurrency=self.opts.concurrency, description=cls.role.about)
            return
        self._offer_remote(orch, self.opts.concurrency)

    def _offer_remote(self, orch: Any, slots: int) -> None:
        """``slots`` more subtasks at once per capability, for the workers on the nodes.

        Each slot is a worker key; the broker places a key on the least busy node when it
        first sees it and keeps it there (moving it only when that node dies). So new
        slots are how a node that joins later gets work: the keys of a killed node have
        moved to the survivors for good.
        """
        from engine.demo import workers

        for cls, role in zip(workers.WORKERS, ROLES, strict=True):
            orch.add_worker(
                cls.type_name,
                capabilities=[role.capability],
                concurrency=slots,
                description=role.about,
            )

    async def _submit_all(self, orch: Any) -> None:
        progress = self.progress
        assert progress is not None
        slots = asyncio.Semaphore(self.opts.in_flight)
        tasks: list[asyncio.Task[None]] = []
        try:
            for q in self.questions:
                await slots.acquire()
                tasks.append(asyncio.ensure_future(self._one(orch, q, slots)))
            await asyncio.gather(*tasks)
            if self._chaos is not None:
                await self._chaos  # the replacement node is up (or its start failed)
        finally:
            for t in tasks:
                t.cancel()
            if self._chaos is not None:
                self._chaos.cancel()
                tasks.append(self._chaos)  # type: ignore[arg-type]
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, orch: Any, q: Question, slots: asyncio.Semaphore) -> None:
        from engine.llm import Budget

        progress = self.progress
        assert progress is not None
        log = progress.jobs
        t0 = time.perf_counter()
        try:
            # Only the one small-budget job gets a budget: a job's last subtask on a node
            # is granted all that is left, starving the orchestrator's own progress and
            # answer calls (requested from the orchestrator's owner).
            budget = Budget(tokens=q.budget, name=f"job {q.index}") if q.budget else None
            job = await orch.submit(q.text, tenant=TENANTS[q.index % 2], budget=budget)
            log.started += 1
            async for ev in job.events():
                if ev.kind == "subtask.finished":
                    log.subtasks_done += 1
                elif ev.kind == "replanned":
                    why = str(ev.data.get("why", ""))
                    progress.event(f"job {q.index} replanned: {why}")
            result = await job.result(timeout=JOB_TIMEOUT)
            log.record(result, time.perf_counter() - t0)
            if self.opts.chaos and self._chaos is None and log.finished >= KILL_AT * log.total:
                self._chaos = asyncio.ensure_future(self._kill_and_restart())
            if q.budget is not None and not result.ok:
                progress.event(f"job {q.index} stopped by its budget ({q.budget} tokens)")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the job has no result: it is lost
            log.lost.append(f"job {q.index}: {type(exc).__name__}: {exc}"[:300])
        finally:
            slots.release()

    async def _watch(self, driver: asyncio.Future[None]) -> None:
        """Scrape the children each second, run the chaos, stop on a child's death."""
        progress = self.progress
        assert progress is not None
        while True:
            await asyncio.sleep(1.0)
            if self.procs is not None:
                dead = self.procs.dead()
                if dead:
                    c = dead[0]
                    who = c.name if c.name == c.role else f"{c.role} {c.name}"
                    self.error = (
                        f"{who} (pid {c.pid}) exited unexpectedly with code "
                        f"{c.popen.returncode}; its log: {c.log}"
                    )
                    driver.cancel()
                    return
            await self._scrape_all()
            self.view.tick()

    async def _kill_and_restart(self) -> None:
        assert self.procs is not None and self.progress is not None
        victim = self.procs.nodes[0]
        for _ in range(3):  # its counts up to the kill (they die with it)
            if await self._scrape(victim):
                break
        at = self.progress.jobs.finished
        self.procs.kill(victim)
        self.chaos = {"killed": victim.name, "pid": victim.pid, "after_jobs": at}
        self.progress.event(f"chaos: SIGKILL {victim.name} (pid {victim.pid}) after {at} jobs")
        name = f"{victim.name}r"
        child = await self.procs.start_node(name, {})
        self.remote[name] = (child, None)
        self.chaos["restarted"] = name
        # The killed node's share of the slots, as new keys: they land on the replacement
        # (least busy), which takes load back; the moved keys stay on the survivors.
        share = max(1, self.opts.concurrency // self.opts.nodes)
        if self.orch is not None:
            self._offer_remote(self.orch, share)
            self.chaos["new_slots"] = share
        self.progress.event(f"chaos: {name} (pid {child.pid}) took its place, {share} new slots")

    async def _scrape(self, child: Child) -> bool:
        """Read ``child``'s metrics; True when this read succeeded.

        One read per child at a time, and a failed read keeps what is stored *now*: a
        read that started before the chaos's last read of its victim and failed at the
        kill must not put its older figures back (they would lose the counts between)."""
        lock = self._scrape_locks.setdefault(child.name, asyncio.Lock())
        async with lock:
            if not (child.alive and child.metrics_url):
                return False
            try:
                s = samples(await asyncio.to_thread(scrape, child.metrics_url, 3.0))
            except Exception:
                return False
            self.remote[child.name] = (child, s)
            return True

    async def _scrape_all(self) -> None:
        await asyncio.gather(*(self._scrape(c) for c, _ in list(self.remote.values())))
        progress = self.progress
        if progress is None:
            return
        total = self._local_llm()
        for child, s in self.remote.values():
            if s is not None and child.role == "node":  # its agents' model calls, its work
                total = total + llm_figures(s)
                progress.nodes[child.name] = executed(s)
        progress.llm = total

    def _local_llm(self) -> LLMFigures:
        if self.metrics is None:
            return LLMFigures()
        from prometheus_client import generate_latest

        return llm_figures(samples(generate_latest(self.metrics.registry).decode()))

    async def _count_store(self, store: Any) -> None:
        counts: dict[str, int] = {}
        cursor = None
        while True:
            page = await store.list_jobs(limit=1000, cursor=cursor)
            for job in page.items:
                counts[job.status] = counts.get(job.status, 0) + 1
            if page.next is None:
                break
            cursor = page.next
        self.store_counts = counts

    def _write_profile(self, sampler: Any) -> None:
        profile = sampler.stop()
        self.profile_samples = profile.samples
        import orjson

        self.out.profile.write_bytes(orjson.dumps(profile.speedscope("engine demo")))

    async def _shutdown(self, store: Any, audit: Any) -> None:
        from engine.demo import workers

        workers.install(None)
        if self.model is not None:
            with contextlib.suppress(Exception):
                await self.model.aclose()
        self._write_metrics()
        if self.procs is not None:
            await asyncio.to_thread(self.procs.stop)
        if store is not None:
            with contextlib.suppress(Exception):
                await store.close()
        audit.close()
        from engine.observe.audit import verify

        with contextlib.suppress(Exception):
            self.audit_records = verify(self.out.audit).records
        self.refusals = _refusals([self.out.audit, *sorted(self.out.logs.glob("*.audit.log"))])
        self.out.corpus.unlink(missing_ok=True)
        self.out.summary.write_bytes(msgspec.json.format(msgspec.json.encode(self.report())))

    def _write_metrics(self) -> None:
        self.out.metrics.mkdir(parents=True, exist_ok=True)
        if self.metrics is not None:
            from prometheus_client import generate_latest

            (self.out.metrics / "demo.prom").write_bytes(generate_latest(self.metrics.registry))
        for child, s in self.remote.values():
            if s is not None:
                lines = [f"{_name(n, lb)} {v}" for (n, lb), v in sorted(s.items(), key=str)]
                (self.out.metrics / f"{child.name}.prom").write_text("\n".join(lines) + "\n")

    # -- the report ----------------------------------------------------------------------
    def endpoints(self) -> list[str]:
        """Every address the run listened on (all 127.0.0.1)."""
        out = [self.runtime_url] if self.runtime_url else []
        for child, _ in self.remote.values():
            out += [u for u in (child.endpoint, child.metrics_url) if u]
        return out

    def report(self) -> Any:
        from engine.demo.display import Report

        return Report.of(self)


def _refusals(logs: list[Path]) -> int:
    """``budget.refused`` records in the verified ``logs`` (a log that fails to verify
    counts none: its records cannot be trusted)."""
    from engine.observe.audit import BUDGET_REFUSED, records, verify

    n = 0
    for log in logs:
        with contextlib.suppress(Exception):
            verify(log)
            n += sum(1 for r in records(log) if r["event"] == BUDGET_REFUSED)
    return n


def _name(name: str, labels: frozenset[tuple[str, str]]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels))
    return f"{name}{{{inner}}}"
