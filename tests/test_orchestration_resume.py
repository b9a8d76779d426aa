"""Resume: after close, after a lease expired (takeover), and after SIGKILL (`engine resume`).

The SIGKILL test runs the real CLI on a real SQLite file: `engine run` is killed in the
middle of a job, `engine resume` finishes it, and every model call and worker execution of
both processes is counted from a shared log (tests/orch_agents.py): no subtask completed
before the kill runs again, and no model call recorded before the kill is made again.
One run in the default suite, twenty under ``-m slow``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine import QueryCancelled, Runtime
from engine.orchestration import OrchestrationError, Orchestrator, set_default_llm
from engine.orchestration.ledgers import StepEntry
from engine.store import open as open_store
from engine.store.base import LedgerEntry
from tests.agents_for_tests import uv
from tests.mesh_procs import ROOT, die_with_parent, env
from tests.orch_agents import GateWorker, PlainWorker, chain, layered, scripted


class Clock:
    t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


async def _started(job: Any, n: int) -> None:
    seen = 0
    async for e in job.events():
        if e.kind == "subtask.finished":
            seen += 1
            if seen >= n:
                return


@uv
async def test_close_then_resume_redoes_nothing_completed() -> None:
    GateWorker.gate = asyncio.Event()
    GateWorker.entered = 0
    llm = scripted(layered(12, 3, cap="gated"))
    set_default_llm(llm)
    store = await open_store("memory://")
    async with Runtime() as rt:
        orch = Orchestrator(llm, rt, store=store)
        orch.add_worker(GateWorker, concurrency=2)
        job = await orch.submit("half way")
        GateWorker.gate.set()
        await _started(job, 3)
        GateWorker.gate.clear()  # the next ones hold: the job is mid-way
        await orch.close()
        with pytest.raises(OrchestrationError, match=r"stopped by Orchestrator\.close"):
            await job.result()
    before = [r.body for r in await orch.s.persist.records(job.id)]
    done_before = {b.subtask for b in before if isinstance(b, StepEntry)}
    calls_before = collections.Counter(c.kind for c in llm.calls)
    assert 3 <= len(done_before) < 12 and calls_before["plan"] == 1
    entered = GateWorker.entered
    GateWorker.gate.set()
    async with Runtime() as rt:
        orch2 = Orchestrator(llm, rt, store=store)
        orch2.add_worker(GateWorker, concurrency=2)
        async with orch2:
            resumed = await orch2.resume(job.id)
            result = await resumed.result(timeout=30)
    assert result.ok and len(result.subtasks) == 12
    runs_after = GateWorker.entered - entered
    # at most the two running at close run again; the completed ones never do
    assert runs_after <= 12 - len(done_before) + 2
    steps = [r.body for r in await orch2.s.persist.records(job.id) if isinstance(r.body, StepEntry)]
    assert len(steps) == 12 and len({s.subtask for s in steps}) == 12
    assert collections.Counter(c.kind for c in llm.calls)["plan"] == 1  # not asked again
    await store.close()


@uv
async def test_a_job_whose_lease_expired_is_taken_over() -> None:
    GateWorker.gate = asyncio.Event()
    clock = Clock()
    store = await open_store("memory://", clock=clock)
    llm = scripted(chain(4, cap="gated"))
    set_default_llm(llm)
    async with Runtime() as rt_a, Runtime() as rt_b:
        a = Orchestrator(llm, rt_a, store=store, lease=10.0, owner="A")
        a.add_worker(GateWorker, concurrency=1)
        b = Orchestrator(llm, rt_b, store=store, lease=10.0, owner="B")
        c = Orchestrator(llm, rt_b, store=store, lease=0.3, owner="C", takeover=True)
        c.add_worker(GateWorker, concurrency=1)
        lacking = Orchestrator(llm, rt_b, store=store, lease=10.0, owner="L")
        lacking.add_worker(PlainWorker)  # cannot run 'gated' subtasks
        b.add_worker(GateWorker, concurrency=1)
        async with b:
            job = await a.submit("take me over")
            GateWorker.gate.set()
            await _started(job, 2)
            GateWorker.gate.clear()
            assert await b.take_over() == []  # A's lease is live
            # A "dies": no more heartbeats, its job stops without a word to the store
            assert a._heartbeat is not None
            a._heartbeat.cancel()
            assert job.query is not None
            job.query.terminate()
            with pytest.raises(QueryCancelled):
                await job.query.wait()
            with pytest.raises(Exception, match="leased by 'A'"):
                await b.resume(job.id)
            clock.t += 11.0
            GateWorker.gate.set()
            taken = await b.take_over()
            assert [j.id for j in taken] == [job.id]
            result = await taken[0].result(timeout=30)
            # an orchestrator with takeover=True claims expired jobs by itself
            job2 = await a.submit("take me over too")
            assert job2.query is not None
            await _started(job2, 1)
            job2.query.terminate()
            with pytest.raises(QueryCancelled):
                await job2.query.wait()
            clock.t += 11.0
            assert await lacking.take_over() == []  # claimed, then let go: not its kind
            with pytest.raises(OrchestrationError, match=r"needs capabilities .*: gated"):
                await lacking.resume(job2.id)
            async with c:  # A is dead: only C can finish job2
                for _ in range(600):  # C's heartbeat (every 0.1 s) claims it
                    record2 = await store.get_job(job2.id)
                    assert record2 is not None
                    if record2.status == "completed":
                        break
                    await asyncio.sleep(0.05)
            assert record2.status == "completed", record2.error
        assert result.ok and [o.status for o in result.subtasks] == ["completed"] * 4
        record = await store.get_job(job.id)
        assert record is not None and record.status == "completed"
    await store.close()


@uv
async def test_resume_of_a_finished_job_returns_its_stored_result() -> None:
    llm = scripted(chain(2, cap="gated"))
    GateWorker.gate = asyncio.Event()
    GateWorker.gate.set()
    set_default_llm(llm)
    store = await open_store("memory://")
    async with Runtime() as rt:
        async with Orchestrator(llm, rt, store=store) as orch:
            orch.add_worker(GateWorker)
            first = await (await orch.submit("done once")).result()
        async with Orchestrator(llm, rt, store=store) as orch2:
            orch2.add_worker(GateWorker)
            again = await orch2.resume(first.job)
            assert (await again.result()) == first
            with pytest.raises(Exception, match="no job 'nope'"):
                await orch2.resume("nope")
    assert len([c for c in llm.calls if c.kind == "plan"]) == 1
    await store.close()


# -- SIGKILL of `engine run`, then `engine resume` ----------------------------------------


def _count(log: Path) -> collections.Counter[str]:
    if not log.exists():
        return collections.Counter()
    return collections.Counter(log.read_text().splitlines())


async def _ledger(url: str, job_id: str) -> list[Any]:
    from engine.orchestration.persist import Persist

    async with open_store(url, create=False) as store:
        return await Persist(store, "test", 1.0).records(job_id)


def _kill_and_resume(tmp: Path) -> tuple[int, list[str], list[tuple[str, str]]]:
    """Kill ``engine run`` mid-job, resume it: (subtasks done before, redone, calls repeated)."""
    db = tmp / "jobs.db"
    log = tmp / "calls.log"
    url = f"sqlite:///{db}"
    e = env()
    e.update(ORCH_LOG=str(log), ORCH_N="60", ORCH_LAYERS="6", ORCH_DELAY="0.01")
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        e.pop(var, None)
    cmd = [sys.executable, "-m", "engine.cli"]
    opts = [
        "--store",
        url,
        "--workers",
        "orch_agents:CountingWorker",
        "--llm",
        "orch_agents:counting_llm",
        "--concurrency",
        "4",
        "--quiet",
    ]
    with subprocess.Popen(
        [*cmd, "run", "count things", *opts],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=e,
        cwd=str(ROOT),
        preexec_fn=die_with_parent,
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline().decode().strip()
            assert first.startswith("job "), first
            job_id = first.split()[1]
            deadline = time.monotonic() + 60
            while sum(n for k, n in _count(log).items() if k.startswith("exec")) < 20:
                assert proc.poll() is None, "engine run ended before it was killed"
                assert time.monotonic() < deadline, "the job never got going"
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before = asyncio.run(_ledger(url, job_id))
    done_before = {
        r.body.subtask
        for r in before
        if isinstance(r.body, StepEntry) and r.body.status == "completed"
    }
    recorded = {
        (r.action, r.input_digest) for r in before if r.action in ("plan", "progress", "summarize")
    }
    assert 0 < len(done_before) < 60, len(done_before)
    res = subprocess.run(
        [*cmd, "resume", job_id, *opts[:2], "--quiet"],
        capture_output=True,
        env=e,
        cwd=str(ROOT),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode().splitlines()
    assert out[0] == f"job {job_id}" and out[1] == "counted answer"
    after = asyncio.run(_ledger(url, job_id))
    steps = [r.body for r in after if isinstance(r.body, StepEntry)]
    assert {s.subtask for s in steps if s.status == "completed"} == {
        f"L{layer}.{i}" for layer in range(6) for i in range(10)
    }
    counts = _count(log)
    assert counts[f"call plan {next(d for a, d in recorded if a == 'plan')}"] == 1
    # completed subtasks redone (or their model calls repeated), recorded calls repeated
    redone = sorted(
        sid for sid in done_before if (counts[f"exec {sid}"], counts[f"call act {sid}"]) != (1, 1)
    )
    repeated = sorted((a, d) for a, d in recorded if counts[f"call {a} {d}"] != 1)
    return len(done_before), redone, repeated


def test_sigkill_then_engine_resume_redoes_nothing(tmp_path: Path) -> None:
    done_before, redone, repeated = _kill_and_resume(tmp_path)
    assert done_before > 0 and redone == [] and repeated == []


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sigkill_then_engine_resume_20_times(tmp_path: Path) -> None:
    for i in range(20):
        run = tmp_path / f"run{i}"
        run.mkdir()
        done_before, redone, repeated = _kill_and_resume(run)
        assert done_before > 0 and redone == [] and repeated == [], i


@uv
async def test_a_damaged_ledger_is_a_clear_error_on_resume() -> None:
    from engine.store import Job, LedgerEntry

    store = await open_store("memory://")
    llm = scripted(chain(1, cap="gated"))
    await store.create_job(Job(id="other", status="running", data=b"\x01not msgpack"))
    await store.create_job(Job(id="bad", status="running", kind="orchestration", data=b"\x81"))
    async with Runtime() as rt, Orchestrator(llm, rt, store=store) as orch:
        orch.add_worker(GateWorker)
        with pytest.raises(OrchestrationError, match="not an orchestration job"):
            await orch.resume("other")
        import msgspec

        from engine.orchestration.persist import Persist
        from engine.orchestration.state import JobSpec

        await store.update_job("bad", data=msgspec.msgpack.encode(JobSpec(task="t")))
        await store.append_ledger("bad", [LedgerEntry(id="x", data=b"\xc1", ledger="task")])
        with pytest.raises(OrchestrationError, match="ledger entry 'x' is not an orchestration"):
            await orch.resume("bad")
        assert isinstance(orch.s.persist, Persist)
    await store.close()


@uv
async def test_a_steps_subtask_records_are_one_store_entry_read_back_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.orchestration import persist as persist_mod
    from engine.orchestration.ledgers import LedgerRecord, ProgressEntry, encode_entry
    from engine.orchestration.persist import Persist
    from engine.orchestration.state import JobCheckpoint

    def ck(step: int) -> JobCheckpoint:
        zero = dict.fromkeys(("replans", "stalls", "completed", "failed", "progress_calls"), 0)
        return JobCheckpoint(
            step=step, status="running", gen=0, tokens=0, cost=0.0, calls=0, **zero
        )

    def rec(i: int) -> LedgerRecord:
        body = StepEntry(0, f"s{i}", "work", "completed", f"output {i} " * 20)
        return LedgerRecord("w", "subtask", "in", "out", 1.0, 2.0, 3, 0.0, body)

    progress = ProgressEntry(0, ["0:s0"], False, False, True)
    note = LedgerRecord("orchestrator", "progress", "", "", 1.0, 1.0, 0, 0.0, progress)
    async with open_store(f"sqlite:///{tmp_path / 'l.db'}") as store:
        p = Persist(store, "test", 60.0)
        step1 = [note, *(rec(i) for i in range(40))]
        await p.step("j", step1, ck(1))
        assert [e.id for e in await store.read_ledger("j")] == ["progress:0", "steps:1"]
        # the list encoded at once holds the same bytes as each record encoded alone
        for n in (1, 15, 16, 40):
            records = [rec(i) for i in range(n)]
            (entry,) = persist_mod._step_entries(7, records)
            assert entry.id == "steps:7"
            assert entry.data == persist_mod._list([encode_entry(r) for r in records])
            # subtask records passed apart from the others: the same entries
            apart = persist_mod._entries(7, [note, records[0]], records[1:])
            assert apart == persist_mod._entries(7, [note, *records])
            assert [e.id for e in apart] == ["progress:0", "steps:7"]
        monkeypatch.setattr(persist_mod, "STEP_ENTRY_BYTES", 1_000)  # split a big step
        step2 = [rec(i) for i in range(40, 50)]
        await p.step("j", step2, ck(2))
        ids = [e.id for e in await store.read_ledger("j")]
        assert ids[:3] == ["progress:0", "steps:1", "steps:2"] and len(ids) > 3
        assert all(i.startswith("steps:2.") for i in ids[3:])
        assert await p.records("j") == [*step1, *step2]  # every record, in append order
        await store.append_ledger("j", [LedgerEntry(id="steps:9", data=b"\xc1", ledger="x")])
        with pytest.raises(OrchestrationError, match="steps:9"):
            await p.records("j")
