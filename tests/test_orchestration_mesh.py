"""Workers on mesh nodes: the same dispatch path as in process, across a real ZeroMQ broker.

Two `engine node` processes host the worker; the orchestrator's runtime reaches them with
``Runtime(mesh=...)``. One node is SIGKILLed in the middle of a job: the broker notices
(heartbeats) and hands its unfinished subtasks to the other node, and the job completes.
One run in the default suite, twenty under ``-m slow``. Budget grants and trace context
cross the hop too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from engine import Runtime
from engine.llm import Budget
from engine.orchestration import JobResult, Orchestrator, RetryPolicy
from tests.agents_for_tests import uv
from tests.mesh_procs import broker, free_port, node, processes
from tests.orch_agents import layered, scripted


def _execs(log: Path) -> list[tuple[str, int]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        parts = line.split()
        if parts[0] == "exec" and len(parts) == 3:
            out.append((parts[1], int(parts[2])))
    return out


async def _job_with_a_node_killed(tmp: Path) -> JobResult:
    import asyncio

    log = tmp / "mesh.log"
    os.environ["ORCH_LOG"] = str(log)  # inherited by the nodes (the tests monkeypatch it)
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with processes() as procs:
        procs.append(broker(port))
        a = node(endpoint, "a", "--concurrency", "8", agents="orch_agents:MeshWorker")
        procs.append(a)
        procs.append(node(endpoint, "b", "--concurrency", "8", agents="orch_agents:MeshWorker"))
        llm = scripted(layered(120, 4, cap="mesh"))
        async with Runtime(mesh=endpoint) as rt:
            retry = RetryPolicy(attempts=3, backoff=0.05, timeout=10.0)
            async with Orchestrator(llm, rt, retry=retry) as orch:
                orch.add_worker("meshworker", capabilities=["mesh"], concurrency=16)
                budget = Budget(tokens=1_000_000, name="mesh job")
                job = await orch.submit("spread out", budget=budget)
                deadline = time.monotonic() + 60
                while True:  # both nodes busy, some work done: kill node a
                    pids = {pid for _, pid in _execs(log)}
                    if len(pids) == 2 and len(_execs(log)) >= 30:
                        break
                    assert time.monotonic() < deadline, "nodes never both got work"
                    await asyncio.sleep(0.01)
                a.kill()
                killed = a.popen.pid
                result = await job.result(timeout=120)
    assert result.ok, result.reason
    assert len(result.subtasks) == 120
    assert all(o.status == "completed" for o in result.subtasks)
    survivors = {int(o.output.split("@")[1].split()[0]) for o in result.subtasks[-30:]}
    assert killed not in survivors  # the last layer ran on the node that stayed
    assert any("grant=BudgetGrant(tokens=" in o.output for o in result.subtasks)
    assert 0 < budget.used_tokens <= 1_000_000 and budget.reserved_tokens == 0
    return result


def test_a_node_killed_mid_job_does_not_stop_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_LOG", "")
    monkeypatch.setenv("ORCH_DELAY", "0.01")
    result = uv(_job_with_a_node_killed)(tmp_path)
    assert result.ok and len(result.subtasks) == 120


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_node_killed_mid_job_20_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_LOG", "")
    monkeypatch.setenv("ORCH_DELAY", "0.01")
    for i in range(20):
        run = tmp_path / f"run{i}"
        run.mkdir()
        result = uv(_job_with_a_node_killed)(run)
        assert result.ok and len(result.subtasks) == 120, i


@uv
async def test_trace_context_crosses_the_mesh_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from engine.observe import Tracer

    monkeypatch.setenv("ORCH_LOG", str(tmp_path / "trace.log"))
    monkeypatch.setenv("ORCH_DELAY", "0")
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    exporter = InMemorySpanExporter()
    tracer = Tracer("orch-test", exporters=[exporter])
    with processes() as procs:
        procs.append(broker(port))
        procs.append(node(endpoint, "a", agents="orch_agents:MeshWorker"))
        llm = scripted(layered(2, 1, cap="mesh"))
        async with Runtime(mesh=endpoint) as rt, Orchestrator(llm, rt, tracer=tracer) as orch:
            orch.add_worker("meshworker", capabilities=["mesh"])
            result = await (await orch.submit("trace me")).result(timeout=60)
    assert result.ok
    spans: dict[str, Any] = {f"{s.context.span_id:016x}": s for s in exporter.get_finished_spans()}
    job = next(s for s in spans.values() if s.name.startswith("job "))
    subtasks = [s for s in spans.values() if s.name.startswith("subtask ")]
    assert len(subtasks) == 2
    for sub in subtasks:
        assert sub.parent is not None and sub.parent.span_id == job.context.span_id
    for o in result.subtasks:  # the node's handler ran in a child of the subtask's span
        _, trace_id, parent, _ = o.output.split("tp=")[1].split("-")
        assert int(trace_id, 16) == job.context.trace_id
        assert parent in {f"{s.context.span_id:016x}" for s in subtasks}
    llm_spans = [s for s in spans.values() if s.name.startswith("orchestrator ")]
    assert {s.name for s in llm_spans} >= {"orchestrator plan", "orchestrator summarize"}
    assert all(s.parent is not None and s.parent.span_id == job.context.span_id for s in llm_spans)
    tracer.shutdown()
