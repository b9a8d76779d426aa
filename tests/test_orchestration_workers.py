"""Workers: ReActAgent (tools, transcript in the ledger, step limit), RetrievalTool, and the
metrics and audit records a job leaves behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine import HashingEmbedder, HybridRetriever, Metrics, Runtime, VectorStore
from engine.errors import OrchestrationError, VectorStoreError
from engine.llm import Reply, Rule
from engine.observe.audit import records
from engine.orchestration import (
    Orchestrator,
    ReActAgent,
    RetrievalTool,
    SubtaskRequest,
    default_llm,
    set_default_llm,
)
from engine.orchestration.ledgers import StepEntry
from engine.orchestration.react import transcript_lines
from tests.agents_for_tests import uv
from tests.orch_agents import EchoWorker, chain, scripted


def _docs() -> HybridRetriever:
    docs = HybridRetriever()
    docs.add([1, 2, 3], ["Paris is the capital of France.", "Rome is in Italy.", "Tea is hot."])
    return docs


class Researcher(ReActAgent):
    capabilities = ("research",)
    tools = (RetrievalTool(_docs(), k=1).tool,)
    max_steps = 3


@uv
async def test_react_worker_thinks_acts_observes_and_its_transcript_is_in_the_ledger() -> None:
    llm = scripted(chain(1, cap="research"))
    llm.rules[3:3] = [
        Rule(
            Reply("let me look", tool_calls=Reply.tool("retrieve", query="France").tool_calls),
            kind="act",
            role="user",
        ),
        Rule(lambda call: "Paris, per " + call.last[:40], kind="act", role="tool"),
    ]
    set_default_llm(llm)
    async with Runtime() as rt, Orchestrator(llm, rt) as orch:
        orch.add_worker(Researcher)
        result = await (await orch.submit("capital of France?")).result()
        steps = [
            r.body
            for r in await orch.s.persist.records(result.job)
            if isinstance(r.body, StepEntry)
        ]
    set_default_llm(None)
    assert result.ok and result.subtasks[0].output.startswith("Paris, per ")
    transcript = steps[0].transcript
    assert transcript[0] == "thought: let me look"
    assert transcript[1] == 'action: retrieve({"query":"France"})'
    assert transcript[2].startswith("observation: ") and "Paris is the capital" in transcript[2]
    assert transcript[3].startswith("answer: Paris")
    assert steps[0].calls == 2


@uv
async def test_react_worker_step_limit_is_a_clear_failure() -> None:
    llm = scripted(chain(1, cap="research"))
    llm.rules.insert(3, Rule(Reply.tool("retrieve", query="again"), kind="act"))
    set_default_llm(llm)
    async with Runtime() as rt:
        rt.register("researcher", Researcher)
        from engine import AgentId

        req = SubtaskRequest(job="j", subtask="s", description="loop", capability="research")
        with pytest.raises(Exception, match="reached its step limit \\(3\\)"):
            await rt.send(req, to=AgentId("researcher"))
    set_default_llm(None)


def test_default_llm_must_be_set() -> None:
    set_default_llm(None)
    with pytest.raises(OrchestrationError, match="set_default_llm"):
        default_llm()


def test_transcript_lines_of_a_tool_loop() -> None:
    msgs = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "done"},
    ]
    assert transcript_lines(msgs) == ["action: f({})", "observation: 42", "answer: done"]


@uv
async def test_retrieval_tool_over_a_hybrid_retriever_and_a_vector_store() -> None:
    hybrid = RetrievalTool(_docs(), k=2)
    assert hybrid.tool.name == "retrieve"
    assert hybrid.tool.cacheable  # no side effects: a ReAct call offering it may be cached
    found = await hybrid.tool("capital of France")
    assert found[0].id == 1 and "Paris" in found[0].text and len(found) == 2

    emb = HashingEmbedder(dim=64)
    texts = {10: "the moon orbits the earth", 11: "bread is baked in ovens"}
    store = VectorStore(64)
    store.add(np.array(list(texts)), emb.embed(list(texts.values())))
    plain = RetrievalTool(store, embedder=emb, lookup=texts, k=1, name="memory")
    hits = plain.search("what orbits the earth")
    assert [h.id for h in hits] == [10] and hits[0].text == texts[10]
    assert plain.tool.name == "memory"

    with pytest.raises(VectorStoreError, match="needs embedder="):
        RetrievalTool(store)
    with pytest.raises(ValueError, match="k must be"):
        RetrievalTool(_docs(), k=0)
    with pytest.raises(VectorStoreError, match="non-empty"):
        hybrid.search("  ")
    assert RetrievalTool(HybridRetriever()).search("anything") == []


@uv
async def test_a_job_feeds_task_metrics_and_audit_records(tmp_path: Path) -> None:
    from engine.observe import AuditLog

    metrics = Metrics()
    audit = AuditLog(tmp_path / "audit.log")
    llm = scripted(chain(3))
    set_default_llm(llm)
    async with Runtime() as rt, Orchestrator(llm, rt, metrics=metrics, audit=audit) as orch:
        orch.add_worker(EchoWorker)
        assert (await (await orch.submit("observe me")).result()).ok
        text = metrics.exposition().decode()
    audit.close()
    set_default_llm(None)
    assert 'engine_tasks_total{status="ok"} 3.0' in text
    assert "engine_tasks_submitted_total 3.0" in text
    assert 'engine_tasks_queued{capability="work"} 0.0' in text
    assert "engine_task_duration_seconds_count 3.0" in text
    events = [r["event"] for r in records(tmp_path / "audit.log")]
    assert events.count("task.assigned") == 3 and events.count("task.completed") == 3
    done = [r["data"] for r in records(tmp_path / "audit.log") if r["event"] == "task.completed"]
    assert sorted(d["subtask"] for d in done) == ["s0", "s1", "s2"]
    assert {d["status"] for d in done} == {"completed"}
    assert all(d["agent"].startswith(f"{EchoWorker.type_name}/") for d in done), done
