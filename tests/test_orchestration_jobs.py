"""Jobs end to end in one process: order, ledgers, batching, repair, replanning, stalls,
loops, budgets, retries, hostile replies, cancellation, pause/resume, fairness, load."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine import Agent, Context, Runtime, handler
from engine.llm import Budget, Reply, ScriptedCall, ScriptedProvider
from engine.orchestration import (
    JobStatus,
    Orchestrator,
    Plan,
    RetryPolicy,
    Subtask,
    SubtaskRequest,
    set_default_llm,
)
from engine.orchestration.ledgers import AnswerEntry, PlanEntry, ProgressEntry, StepEntry
from tests.agents_for_tests import uv
from tests.orch_agents import (
    STALLED,
    BadReplyWorker,
    EchoWorker,
    FailWorker,
    FlakyWorker,
    GateWorker,
    PlainWorker,
    chain,
    layered,
    scripted,
)


@asynccontextmanager
async def orchestrator(
    llm: Any, *workers: type, concurrency: int = 8, **opts: Any
) -> AsyncIterator[Orchestrator]:
    set_default_llm(llm)
    async with Runtime() as rt:
        orch = Orchestrator(llm, rt, **opts)
        for w in workers:
            orch.add_worker(w, concurrency=concurrency)
        async with orch:
            yield orch
    set_default_llm(None)


def kinds(llm: ScriptedProvider) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in llm.calls:
        out[c.kind] = out.get(c.kind, 0) + 1
    return out


async def ledger(orch: Orchestrator, job_id: str) -> list[Any]:
    return [r.body for r in await orch.s.persist.records(job_id)]


def unique_plans(make: Callable[[str], Plan]) -> Callable[[ScriptedCall], Reply]:
    """A plan reply with fresh subtask ids per call (replans may not reuse done ids)."""
    counter = itertools.count()
    return lambda call: Reply(parsed=make(f"g{next(counter)}."))


@uv
async def test_a_chain_runs_in_order_and_is_recorded_in_both_ledgers() -> None:
    llm = scripted(chain(5))
    async with orchestrator(llm, EchoWorker) as orch:
        job = await orch.submit("count to five", tenant="t1")
        events = [e async for e in job.events()]
        result = await job.result()
        assert result.ok and result.answer == "the final answer" and result.job == job.id
        assert [o.status for o in result.subtasks] == ["completed"] * 5
        by_id = {o.id: o for o in result.subtasks}
        assert by_id["s3"].output.startswith("s3<-s2:")  # got its dependency's output
        assert result.tokens > 0 and result.duration > 0
        assert events[0].kind == "planned" and events[-1].kind == "done"
        finished = [e.subtask for e in events if e.kind == "subtask.finished"]
        assert finished == ["s0", "s1", "s2", "s3", "s4"]
        body = await ledger(orch, job.id)
        assert isinstance(body[0], PlanEntry) and body[0].plan == chain(5)
        steps = [b for b in body if isinstance(b, StepEntry)]
        assert [b.subtask for b in steps] == finished and all(b.calls == 1 for b in steps)
        covered = sorted(k for b in body if isinstance(b, ProgressEntry) for k in b.covers)
        assert covered == sorted(f"0:{sid}" for sid in finished)  # each step exactly once
        assert isinstance(body[-1], AnswerEntry)
        record = await orch.store.get_job(job.id)  # type: ignore[union-attr]
        assert record is not None and record.status == "completed" and record.tenant == "t1"
        assert record.owner == ""  # lease released
    assert kinds(llm) == {"plan": 1, "progress": 5, "summarize": 1, "act": 5}


@uv
async def test_a_late_subscriber_is_replayed_the_events_a_live_one_saw() -> None:
    llm = scripted(chain(3))
    async with orchestrator(llm, EchoWorker) as orch:
        watched = await orch.submit("count to three")
        live = [e async for e in watched.events()]
        unwatched = await orch.submit("count to three")
        await unwatched.result()  # nobody listened while it ran: its history holds them
        late = [e async for e in unwatched.events()]
    assert [(e.kind, e.subtask) for e in late] == [(e.kind, e.subtask) for e in live]
    for evs in (live, late):
        done = [e for e in evs if e.kind == "subtask.finished"]
        assert [e.subtask for e in done] == ["s0", "s1", "s2"]
        assert all(e.data["status"] == "completed" and e.data["error"] == "" for e in done)
        assert all(e.data["tokens"] > 0 and e.data["agent"] for e in done)


@uv
async def test_progress_calls_are_batched_at_high_fan_out() -> None:
    llm = scripted(layered(400, 2))
    async with orchestrator(llm, EchoWorker, concurrency=200) as orch:
        job = await orch.submit("fan out")
        result = await job.result()
        assert result.ok and len(result.subtasks) == 400
        body = await ledger(orch, job.id)
    progress = [b for b in body if isinstance(b, ProgressEntry)]
    keys = [k for b in progress for k in b.covers]
    assert len(keys) == len(set(keys)) == 400
    assert len(progress) <= 20, len(progress)  # not one call per subtask
    assert max(len(b.covers) for b in progress) >= 50


@uv
async def test_an_invalid_plan_gets_one_repair_round_naming_the_errors() -> None:
    bad = Plan(
        subtasks=[
            Subtask(id="a", description="x", capability="work", depends_on=["b"]),
            Subtask(id="b", description="y", capability="work", depends_on=["a"]),
        ]
    )
    replies = iter([Reply(parsed=bad), Reply(parsed=chain(2))])
    llm = scripted(lambda call: next(replies))
    async with orchestrator(llm, EchoWorker) as orch:
        result = await (await orch.submit("repair me")).result()
        assert result.ok
        plans = [b for b in await ledger(orch, result.job) if isinstance(b, PlanEntry)]
    assert [(p.attempt, bool(p.errors)) for p in plans] == [(1, True), (2, False)]
    repair = [c for c in llm.calls if c.kind == "plan"][1]
    assert "dependency cycle: a -> b -> a" in repair.last


@uv
async def test_a_plan_still_invalid_after_repair_fails_the_job_with_plan_error() -> None:
    bad = Plan(subtasks=[Subtask(id="a", description="x", capability="teleport")])
    llm = scripted(bad)
    async with orchestrator(llm, EchoWorker) as orch:
        job = await orch.submit("impossible")
        events = [e.kind async for e in job.events()]
        result = await job.result()
    assert result.status is JobStatus.FAILED and result.error == "PlanError"
    # the typed plan refuses the capability: the LLM layer's own repair round names it
    assert "Invalid enum value 'teleport'" in result.reason
    assert kinds(llm) == {"plan": 2}
    assert "teleport" in [c for c in llm.calls if c.kind == "plan"][1].last
    assert events == ["done"] and result.subtasks == []


@uv
async def test_the_plan_call_asks_for_the_capability_enum() -> None:
    llm = scripted(chain(1))
    async with orchestrator(llm, EchoWorker, PlainWorker) as orch:
        assert (await (await orch.submit("x")).result()).ok
    plan_call = next(c for c in llm.calls if c.kind == "plan")
    import msgspec

    schema = msgspec.json.schema(plan_call.response_format)
    assert schema["$defs"]["Subtask"]["properties"]["capability"]["enum"] == ["plain", "work"]


@uv
async def test_a_failed_subtask_is_retried_then_replanned_keeping_completed_work() -> None:
    def make(prefix: str) -> Plan:
        first = prefix == "g0."
        return Plan(
            subtasks=[
                Subtask(id=f"{prefix}ok", description=f"fine {prefix}", capability="work"),
                Subtask(
                    id=f"{prefix}x",
                    description="fail here" if first else "do it right",
                    capability="work",
                    depends_on=[f"{prefix}ok"],
                ),
                Subtask(
                    id=f"{prefix}after",
                    description=f"after {prefix}",
                    capability="work",
                    depends_on=[f"{prefix}x"],
                ),
            ]
        )

    llm = scripted(unique_plans(make))
    async with orchestrator(llm, FailWorker, retry=RetryPolicy(attempts=2, backoff=0)) as orch:
        job = await orch.submit("replan me")
        events = [e async for e in job.events()]
        result = await job.result()
    assert result.ok and result.replans == 1
    status = {o.id: o.status for o in result.subtasks}
    assert status["g0.ok"] == "completed" and status["g0.x"] == "failed"
    assert status["g0.after"] == "failed"  # dropped with its failed dependency
    assert all(status[f"g1.{n}"] == "completed" for n in ("ok", "x", "after"))
    failed = next(o for o in result.subtasks if o.id == "g0.x")
    assert failed.attempts == 2 and "cannot do g0.x" in failed.error
    replanned = [e for e in events if e.kind == "replanned"]
    assert len(replanned) == 1 and "g0.x" in replanned[0].data["why"]
    replan_call = [c for c in llm.calls if c.kind == "plan"][1]
    assert "Completed subtasks" in replan_call.last and "[g0.ok]" in replan_call.last


@uv
async def test_a_replan_may_build_on_a_completed_subtask_of_the_earlier_plan() -> None:
    first = Plan(
        subtasks=[
            Subtask(id="a", description="fine a", capability="work"),
            Subtask(id="b", description="fail b", capability="work", depends_on=["a"]),
        ]
    )
    second = Plan(subtasks=[Subtask(id="c", description="c", capability="work", depends_on=["a"])])
    plans = iter([first, second])
    llm = scripted(lambda call: Reply(parsed=next(plans)))
    async with orchestrator(llm, FailWorker, retry=RetryPolicy(attempts=1)) as orch:
        result = await (await orch.submit("build on a")).result()
    assert result.ok and result.replans == 1, result.reason
    status = {o.id: o.status for o in result.subtasks}
    assert status == {"a": "completed", "b": "failed", "c": "completed"}


@uv
async def test_failures_past_max_replans_fail_the_job_with_the_reason() -> None:
    llm = scripted(
        unique_plans(
            lambda p: Plan(
                subtasks=[Subtask(id=f"{p}x", description=f"fail {p}", capability="work")]
            )
        )
    )
    async with orchestrator(llm, FailWorker, retry=RetryPolicy(attempts=1), max_replans=1) as orch:
        result = await (await orch.submit("hopeless")).result()
    assert result.status is JobStatus.FAILED and result.error == "StallError"
    assert "gave up after 1 replan(s)" in result.reason and "cannot do g1.x" in result.reason
    assert kinds(llm)["plan"] == 2


@uv
async def test_no_progress_for_n_steps_replans_then_fails() -> None:
    llm = scripted(unique_plans(lambda p: chain(4, cap="plain", prefix=p)), progress=STALLED)
    async with orchestrator(llm, PlainWorker, concurrency=1, max_stalls=2, max_replans=1) as orch:
        job = await orch.submit("stuck")
        events = [e async for e in job.events()]
        result = await job.result()
    assert result.status is JobStatus.FAILED and result.error == "StallError"
    assert "no progress is being made" in result.reason and result.replans == 1
    replanned = [e for e in events if e.kind == "replanned"]
    assert len(replanned) == 1 and "no progress is being made (stuck)" in replanned[0].data["why"]
    progress = [e for e in events if e.kind == "progress"]
    assert len(progress) >= 4 and not any(e.data["progress"] for e in progress)


@uv
async def test_the_same_delegation_repeating_is_a_loop() -> None:
    same = Plan(
        subtasks=[
            Subtask(id=f"r{i}", description="the same thing", capability="plain") for i in range(5)
        ]
    )
    llm = scripted(same)
    async with orchestrator(llm, PlainWorker, concurrency=1, max_replans=0) as orch:
        result = await (await orch.submit("loop")).result()
    assert result.status is JobStatus.FAILED
    assert "the same delegation repeated 3 times" in result.reason


class _Counting:
    """Wraps a model: records the usage of every call that actually went out."""

    def __init__(self, inner: ScriptedProvider) -> None:
        self.inner = inner
        self.used: list[int] = []

    async def chat(self, messages: Any, **kw: Any) -> Any:
        res = await self.inner.chat(messages, **kw)
        self.used.append(res.usage.total_tokens)
        return res


@uv
async def test_a_budget_refusal_mid_job_fails_it_and_no_call_goes_past_the_limit() -> None:
    llm = _Counting(scripted(chain(30)))
    limit = 2_000
    async with orchestrator(llm, EchoWorker) as orch:
        budget = Budget(tokens=limit, name="job")
        job = await orch.submit("spend", budget=budget)
        result = await job.result()
    assert result.status is JobStatus.FAILED and result.error == "BudgetExceeded"
    assert "budget 'job' refused the call" in result.reason
    done = [o for o in result.subtasks if o.status == "completed"]
    assert 0 < len(done) < 30  # it ran, then stopped mid-job
    assert sum(llm.used) <= limit and budget.used_tokens == sum(llm.used)
    assert budget.reserved_tokens == 0


def test_a_remote_grant_leaves_the_orchestrator_its_share() -> None:
    from engine.orchestration._budget import grant_for

    budget = Budget(tokens=1_000, calls=10)
    grant, hold = grant_for(budget, 1)  # the last subtask: it and the orchestrator's calls
    assert (grant.tokens, grant.calls) == (500, 5)
    assert budget.remaining()["tokens"] == 500  # the progress/summarize calls can still run
    hold.settle(100, 0.0, 1)
    assert budget.used_tokens == 100 and budget.remaining()["tokens"] == 900
    grant, hold = grant_for(budget, 3)
    assert grant.tokens == 900 // 4
    hold.release()
    assert budget.reserved_tokens == 0


@uv
async def test_a_flaky_worker_is_retried() -> None:
    FlakyWorker.seen.clear()
    llm = scripted(chain(3, cap="flaky"))
    async with orchestrator(llm, FlakyWorker, retry=RetryPolicy(attempts=3, backoff=0)) as orch:
        result = await (await orch.submit("flaky")).result()
    assert result.ok and [o.attempts for o in result.subtasks] == [2, 2, 2]


@uv
async def test_hostile_worker_replies_are_checked() -> None:
    plan = Plan(
        subtasks=[
            Subtask(id="n", description="number", capability="bad"),
            Subtask(id="h", description="huge", capability="bad"),
        ]
    )
    llm = scripted(plan)
    async with orchestrator(
        llm, BadReplyWorker, retry=RetryPolicy(attempts=1), max_replans=0
    ) as orch:
        result = await (await orch.submit("bad")).result()
    by_id = {o.id: o for o in result.subtasks}
    assert by_id["n"].status == "failed" and "replied int" in by_id["n"].error
    assert by_id["h"].status == "completed" and len(by_id["h"].output) < 70_000
    assert by_id["h"].tokens == 0 and by_id["h"].cost == 0.0


@uv
async def test_cancel_stops_running_subtasks_and_ends_the_job() -> None:
    GateWorker.gate = asyncio.Event()
    GateWorker.entered = 0
    llm = scripted(layered(20, 2, cap="gated"))
    async with orchestrator(llm, GateWorker, concurrency=4) as orch:
        job = await orch.submit("cancel me")
        async for e in job.events():
            if e.kind == "subtask.started":
                break
        job.cancel()
        result = await job.result(timeout=30)
        assert result.status is JobStatus.CANCELLED and result.reason == "cancelled"
        assert orch.dispatcher.sched.stats()["running"] == 0 and len(orch.dispatcher.sched) == 0
        assert GateWorker.entered <= 4
        record = await orch.store.get_job(job.id)  # type: ignore[union-attr]
        assert record is not None and record.status == "cancelled"
        with pytest.raises(Exception, match="cancelled"):
            job.pause()


@uv
async def test_pause_holds_new_dispatches_until_resume() -> None:
    GateWorker.gate = asyncio.Event()
    GateWorker.entered = 0
    llm = scripted(chain(3, cap="gated"))
    async with orchestrator(llm, GateWorker, concurrency=2) as orch:
        job = await orch.submit("pause me")
        seen = job.events()
        async for e in seen:
            if e.kind == "subtask.started":
                break
        job.pause()
        assert job.status is JobStatus.PAUSED
        GateWorker.gate.set()  # s0 finishes while paused; s1 must not start
        async for e in seen:
            if e.kind == "subtask.finished":
                break
        for _ in range(20):
            await asyncio.sleep(0)
        assert GateWorker.entered == 1 and len(orch.dispatcher.sched) == 0
        job.resume()
        result = await job.result(timeout=30)
    assert result.ok and GateWorker.entered == 3


@uv
async def test_tenants_share_a_pool_by_weight() -> None:
    order: list[str] = []

    class Recorder(Agent):
        capabilities = ("plain",)

        @handler
        def on_subtask(self, req: SubtaskRequest, ctx: Context) -> str:
            order.append(req.tenant)
            return "ok"

    wide = Plan(
        subtasks=[Subtask(id=f"w{i}", description=f"w {i}", capability="plain") for i in range(30)]
    )
    llm = scripted(wide)
    async with orchestrator(llm, Recorder, concurrency=1) as orch:
        orch.set_tenant_weight("big", 2)
        a = await orch.submit("A", tenant="big")
        b = await orch.submit("B", tenant="small")
        await asyncio.gather(a.result(), b.result())
    assert len(order) == 60
    first = order[:30]  # both tenants backlogged: 2 : 1 (one dispatch may precede B's push)
    assert abs(first.count("big") - 20) <= 1, first


@uv
async def test_one_thousand_concurrent_jobs_replanning_do_not_deadlock() -> None:
    def plan(call: ScriptedCall) -> Reply:
        gen = "g1" if "being replaced" in call.last else "g0"
        desc = "fail now" if gen == "g0" else "fine"
        return Reply(
            parsed=Plan(
                subtasks=[
                    Subtask(id=f"{gen}.a", description=f"a {gen}", capability="work"),
                    Subtask(
                        id=f"{gen}.b", description=desc, capability="work", depends_on=[f"{gen}.a"]
                    ),
                ]
            )
        )

    llm = scripted(plan)
    async with orchestrator(llm, FailWorker, concurrency=32, retry=RetryPolicy(attempts=1)) as orch:
        jobs = [await orch.submit(f"job {i}", tenant=f"t{i % 7}") for i in range(1000)]
        results = await asyncio.wait_for(asyncio.gather(*(j.result() for j in jobs)), 300)
        assert all(r.ok and r.replans == 1 for r in results)
        assert len(orch.dispatcher.sched) == 0 and orch.dispatcher.running == 0
        assert not orch.jobs


@uv
async def test_a_lease_beat_racing_a_job_s_end_never_fails_the_finished_job() -> None:
    """The lease beat (every lease/3) can land between a job's lease release and its result;
    a job that is ending is not "lost to another orchestrator" (a short lease makes the
    beats frequent enough to hit that window many times)."""
    async with orchestrator(scripted(chain(2)), EchoWorker, lease=0.03) as orch:
        jobs = [await orch.submit(f"job {i}") for i in range(150)]
        results = await asyncio.wait_for(asyncio.gather(*(j.result() for j in jobs)), 120)
    assert [r.status for r in results] == [JobStatus.COMPLETED] * len(jobs)


@uv
async def test_a_job_writes_one_transaction_per_step_and_one_to_end(tmp_path: Path) -> None:
    """Counted on a real SQLite file: the job's creation, one commit per step (checkpoint
    and ledger records together), and one for its last step, result and lease release."""
    async with orchestrator(
        scripted(chain(5)), EchoWorker, store=f"sqlite:///{tmp_path / 'jobs.db'}"
    ) as orch:
        store = orch.store
        assert store is not None
        calls: dict[str, int] = {}
        for name in ("create_job", "put_checkpoint", "finish_job", "update_job", "release_job"):
            method = getattr(store, name)

            def counted(*a: Any, _m: Any = method, _n: str = name, **k: Any) -> Any:
                calls[_n] = calls.get(_n, 0) + 1
                return _m(*a, **k)

            setattr(store, name, counted)
        commits = store._queue.batches  # type: ignore[attr-defined]
        result = await (await orch.submit("count to five")).result()
        assert result.ok
        # a chain finishes one subtask per step: 5 steps, then the end
        assert calls == {"create_job": 1, "put_checkpoint": 5, "finish_job": 1}
        assert store._queue.batches - commits == 7  # type: ignore[attr-defined]
        record = await store.get_job(result.job)
        assert record is not None and (record.status, record.owner) == ("completed", "")
        last = await store.get_checkpoint(result.job)
        assert last is not None and last.version == 6
        assert isinstance((await ledger(orch, result.job))[-1], AnswerEntry)


@uv
async def test_workers_that_answer_at_once_cost_no_task_per_subtask() -> None:
    """A subtask's first step runs in the dispatcher: a worker that does not suspend needs
    no asyncio task; a pool with fewer keys than a layer still runs every subtask (the
    freed key serves the backlog), and every key is back when the job ends."""
    llm = scripted(layered(40, 4))
    async with orchestrator(llm, EchoWorker, concurrency=2) as orch:
        loop = asyncio.get_running_loop()
        made: list[str] = []
        default = loop.get_task_factory()

        def factory(lp: Any, coro: Any, **kw: Any) -> Any:
            made.append(getattr(coro, "__qualname__", type(coro).__name__))
            return default(lp, coro, **kw) if default else asyncio.Task(coro, loop=lp, **kw)

        loop.set_task_factory(factory)
        try:
            result = await (await orch.submit("forty at once")).result(timeout=30)
        finally:
            loop.set_task_factory(default)
        assert result.ok and len(result.subtasks) == 40
        assert all(o.status == "completed" for o in result.subtasks)
        assert kinds(llm)["act"] == 40
        # the job's own tasks (its driver, one per progress call), none per subtask
        assert "attempts" not in made and len(made) == 1 + kinds(llm)["progress"]
        pool = orch.dispatcher._pools["work"]
        assert orch.dispatcher.running == 0 and len(pool.free) == len(pool.keys) == 2
