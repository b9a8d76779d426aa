"""EngineSaver: LangGraph's own conformance suite, and real graphs (sync and async)."""

from __future__ import annotations

import operator
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

import pytest

pytest.importorskip("langgraph.checkpoint.conformance")

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import BASE_CAPABILITIES
from langgraph.graph import END, START, StateGraph

import engine.store
from engine.store.langgraph import EngineSaver
from tests.agents_for_tests import uv
from tests.store.conftest import Backend

IMPLEMENTED_EXTRAS = {"copy_thread", "prune"}


@uv
async def test_langgraph_conformance_suite(backend: Backend) -> None:
    @checkpointer_test(name=f"EngineSaver[{backend.kind}]")
    async def factory() -> AsyncIterator[EngineSaver]:
        saver = EngineSaver(backend.url, keep_checkpoints=None)
        yield saver
        await saver.aclose()

    report = await validate(factory)
    failures = {cap: res.failures for cap, res in report.results.items() if res.passed is False}
    assert not failures, failures
    for cap in BASE_CAPABILITIES:
        assert report.results[cap.value].passed is True, cap
    for cap in IMPLEMENTED_EXTRAS:
        assert report.results[cap].passed is True, cap
    assert report.results["delete_for_runs"].detected is False


class State(TypedDict):
    ledger: Annotated[list[dict[str, Any]], operator.add]
    step: int


def _graph() -> Any:
    def work(state: State) -> dict[str, Any]:
        n = state["step"] + 1
        return {"step": n, "ledger": [{"step": n, "agent": f"w{n % 3}"}]}

    def route(state: State) -> str:
        return END if state["step"] >= 5 else "work"

    g = StateGraph(State)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", route)
    return g


def test_sync_graph_on_a_url_resumes_from_the_store(sql_backend: Backend) -> None:
    config = {"configurable": {"thread_id": "t1"}}
    with EngineSaver(sql_backend.url) as saver:
        out = _graph().compile(checkpointer=saver).invoke({"ledger": [], "step": 0}, config)
        assert out["step"] == 5 and len(out["ledger"]) == 5
    with EngineSaver(sql_backend.url) as saver:  # a new process would see the same
        state = _graph().compile(checkpointer=saver).get_state(config)
        assert state.values["step"] == 5
        history = list(saver.list(config))
        assert len(history) == 7  # input + 5 steps + the start
        assert [h.metadata["step"] for h in history][:2] == [5, 4]


@uv
async def test_async_graph_on_an_open_store(backend: Backend) -> None:
    async with backend.open() as store:
        saver = EngineSaver(store)
        graph = _graph().compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "t2"}}
        out = await graph.ainvoke({"ledger": [], "step": 0}, config)
        assert out["step"] == 5
        snap = await graph.aget_state(config)
        assert [e["step"] for e in snap.values["ledger"]] == [1, 2, 3, 4, 5]
        # time travel: re-run from the checkpoint after step 2
        past = [h async for h in saver.alist(config) if h.metadata["step"] == 2].pop()
        again = await graph.ainvoke(None, past.config)
        assert again["step"] == 5 and len(again["ledger"]) == 5
        await saver.aclose()  # leaves the store (not opened by the saver) open
        assert await store.get_checkpoint("langgraph:t2") is not None


def test_bad_url_fails_at_construction() -> None:
    with pytest.raises(engine.store.StoreURLError):
        EngineSaver("redis://nope")


def test_private_loop_runs_coroutines_that_suspend_or_fail() -> None:
    import asyncio

    from engine.store._lane import _run_here

    loop = asyncio.new_event_loop()

    async def no_wait() -> int:
        assert asyncio.get_running_loop() is loop
        return 1

    async def waits() -> int:
        fut = loop.create_future()
        loop.call_soon(fut.set_result, 2)
        got = await fut
        await asyncio.sleep(0)
        return got + await asyncio.sleep(0.001, result=3)

    async def fails_after_waiting() -> None:
        fut = loop.create_future()
        loop.call_soon(fut.set_exception, KeyError("boom"))
        await fut

    try:
        assert _run_here(loop, no_wait()) == 1
        assert _run_here(loop, waits()) == 5
        with pytest.raises(KeyError):
            _run_here(loop, fails_after_waiting())
        assert _run_here(loop, no_wait()) == 1  # the loop is fine afterwards
    finally:
        loop.close()


def test_writes_and_checkpoints_from_threads_at_once(sql_backend: Backend) -> None:
    """LangGraph's sync loop saves a step's checkpoint and the tasks' pending writes from
    different executor threads at the same time; on PostgreSQL a URL-opened saver commits
    the writes on a store of their own, on SQLite (one writer at a time anyway) on its one
    connection, and nothing is lost or mixed up."""
    from concurrent.futures import ThreadPoolExecutor

    from langgraph.checkpoint.base import empty_checkpoint

    with (
        EngineSaver(sql_backend.url, keep_checkpoints=None) as saver,
        ThreadPoolExecutor(4) as pool,
    ):
        two = saver._writes_lane is not saver._lane
        assert two == (sql_backend.kind == "postgres")  # connections: PostgreSQL 2, SQLite 1
        config: Any = {"configurable": {"thread_id": "th", "checkpoint_ns": ""}}
        ids = []
        for i in range(20):
            ck = empty_checkpoint()
            ids.append(ck["id"])
            put = pool.submit(saver.put, config, ck, {"step": i}, {})
            if i:  # the previous checkpoint's writes, beside this checkpoint's put
                prev = {"configurable": {**config["configurable"], "checkpoint_id": ids[i - 1]}}
                writes = pool.submit(saver.put_writes, prev, [("ch", i - 1)], f"task{i - 1}")
                writes.result()
            config = put.result()
        thread = {"configurable": {"thread_id": "th"}}
        listed = {t.config["configurable"]["checkpoint_id"]: t for t in saver.list(thread)}
        assert len(listed) == 20
        for i, cid in enumerate(ids[:-1]):
            assert listed[cid].pending_writes == [(f"task{i}", "ch", i)]
