"""Orchestration throughput: the engine in process and over the mesh, against LangGraph.

Run: ``.venv/bin/python benches/bench_orchestration.py`` (prints the table and ratios) or
``.venv/bin/python -m pytest benches/bench_orchestration.py -s`` (same, asserting the
acceptance lines). LangGraph comes from the ``compare`` extra.

The workload (``benches/orch_bench_agents.py``): N = 100 and 1,000 subtasks in 10
dependency layers, each a worker making one model call on a zero-latency
``ScriptedProvider``, aggregated at the end by one model call. Every setup runs it in this
process, in the same run, best of ``ORCH_BENCH_REPEAT`` (3) runs:

- **engine/sqlite**: ``Orchestrator`` with a SQLite store (a ledger append and a checkpoint
  after every step, ``commit`` durability), workers in process (64 per capability). It
  also makes its own plan, progress and summarize calls;
- **engine/memory**: the same on ``memory://`` (what the store costs);
- **engine/mesh**: the same orchestrator and SQLite store, workers on 2 ``engine node``
  processes behind an ``engine broker`` (all on 127.0.0.1);
- **langgraph/sqlite**: a ``StateGraph`` that fans each layer out with ``Send`` to a worker
  node making the same model call, joins, and aggregates, compiled with
  ``AsyncSqliteSaver`` (a checkpoint per superstep); **langgraph/none**: no checkpointer.

Reported: subtasks/s (N / wall time from submit to answer) and engine/langgraph ratios at
equal checkpointing (SQLite both).
"""

from __future__ import annotations

import operator
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from orch_bench_agents import LAYERS, BenchWorker, orchestrator_llm, worker_llm  # noqa: E402

SIZES = tuple(int(x) for x in os.environ.get("ORCH_BENCH_SIZES", "100,1000").split(","))
REPEAT = int(os.environ.get("ORCH_BENCH_REPEAT", "3"))
CONCURRENCY = 64


async def _engine_runs(url: str, n: int, *, mesh: str | None = None, repeat: int = REPEAT) -> float:
    from engine import Runtime
    from engine.orchestration import Orchestrator
    from engine.store import open as open_store

    llm = orchestrator_llm(n)
    best = float("inf")
    async with open_store(url) as store, Runtime(mesh=mesh) as rt:
        orch = Orchestrator(llm, rt, store=store, max_stalls=10**6, max_repeats=10**6)
        if mesh is None:
            orch.add_worker(BenchWorker, concurrency=CONCURRENCY)
        else:
            orch.add_worker("benchworker", capabilities=["work"], concurrency=CONCURRENCY)
        async with orch:
            await (await orch.submit("warm up")).result()
            for _ in range(repeat):
                t0 = time.perf_counter()
                result = await (await orch.submit("the benchmark task")).result()
                dt = time.perf_counter() - t0
                assert result.ok and len(result.subtasks) == n, result.reason
                best = min(best, dt)
    return n / best


class State(TypedDict):
    """The LangGraph workload's state: the layer, every worker's result, the answer."""

    layer: int
    results: Annotated[list[str], operator.add]
    answer: str


def _langgraph(n: int, saver: Any) -> Any:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    width = n // LAYERS

    def fan_out(state: State) -> Any:
        layer = state["layer"]
        if layer >= LAYERS:
            return "aggregate"
        prev = state["results"][-width:] if layer else []
        return [
            Send(
                "work",
                {
                    "layer": layer,
                    "i": i,
                    "inputs": [prev[i], prev[(i + 1) % width]] if prev else [],
                },
            )
            for i in range(width)
        ]

    async def work(arg: dict[str, Any]) -> dict[str, Any]:
        prompt = f"Your subtask (L{arg['layer']}.{arg['i']}): layer {arg['layer']} item " + (
            f"{arg['i']}\n\n" + "\n\n".join(arg["inputs"])
        )
        res = await worker_llm.chat(prompt, kind="act")
        return {"results": [res.text]}

    def advance(state: State) -> dict[str, Any]:
        return {"layer": state["layer"] + 1}

    async def aggregate(state: State) -> dict[str, Any]:
        res = await worker_llm.chat("\n".join(state["results"])[:100_000], kind="summarize")
        return {"answer": res.text}

    g = StateGraph(State)
    g.add_node("start", lambda s: {"layer": 0})
    g.add_node("work", work)
    g.add_node("advance", advance)
    g.add_node("aggregate", aggregate)
    g.add_edge(START, "start")
    g.add_conditional_edges("start", fan_out, ["work", "aggregate"])
    g.add_edge("work", "advance")
    g.add_conditional_edges("advance", fan_out, ["work", "aggregate"])
    g.add_edge("aggregate", END)
    return g.compile(checkpointer=saver)


async def _langgraph_runs(n: int, db: str | None, repeat: int = REPEAT) -> float:
    best = float("inf")

    async def run(graph: Any, i: int) -> None:
        cfg = {"configurable": {"thread_id": f"t{i}"}, "recursion_limit": 4 * LAYERS + 10}
        out = await graph.ainvoke({"layer": 0, "results": [], "answer": ""}, cfg)
        assert len(out["results"]) == n and out["answer"]

    async def all_runs(graph: Any) -> float:
        best_ = float("inf")
        await run(graph, -1)  # warm up
        for i in range(repeat):
            t0 = time.perf_counter()
            await run(graph, i)
            best_ = min(best_, time.perf_counter() - t0)
        return best_

    if db is None:
        best = await all_runs(_langgraph(n, None))
    else:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(db) as saver:
            best = await all_runs(_langgraph(n, saver))
    return n / best


def measure() -> dict[str, dict[int, float]]:
    import uvloop
    from bench_mesh import _procs, _spawn  # the mesh bench's process helpers

    out: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def db(name: str) -> str:
            return str(Path(tmp) / name)

        with _procs() as procs:
            port = _free_port()
            ep = f"tcp://127.0.0.1:{port}"
            cli = [sys.executable, "-m", "engine.cli"]
            procs.append(_spawn([*cli, "broker", "--bind", ep], "listening"))
            for name in ("n1", "n2"):
                procs.append(
                    _spawn(
                        [
                            *cli,
                            "node",
                            "--connect",
                            ep,
                            "--agents",
                            "orch_bench_agents:BenchWorker",
                            "--name",
                            name,
                            "--concurrency",
                            "64",
                        ],
                        "serving",
                    )
                )
            for n in SIZES:
                row = out
                row.setdefault("engine/sqlite", {})[n] = uvloop.run(
                    _engine_runs(f"sqlite:///{db(f'e{n}.db')}", n)
                )
                row.setdefault("engine/memory", {})[n] = uvloop.run(_engine_runs("memory://", n))
                row.setdefault("engine/mesh", {})[n] = uvloop.run(
                    _engine_runs(f"sqlite:///{db(f'm{n}.db')}", n, mesh=ep)
                )
                row.setdefault("langgraph/sqlite", {})[n] = uvloop.run(
                    _langgraph_runs(n, db(f"lg{n}.db"))
                )
                row.setdefault("langgraph/none", {})[n] = uvloop.run(_langgraph_runs(n, None))
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def report(results: dict[str, dict[int, float]]) -> list[str]:
    lines = [
        "| setup | " + " | ".join(f"N={n} subtasks/s" for n in SIZES) + " |",
        "|---|" + "---|" * len(SIZES),
    ]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[n]:,.0f}" for n in SIZES) + " |")
    lines.append("")
    for n in SIZES:
        eng, lg = results["engine/sqlite"][n], results["langgraph/sqlite"][n]
        lines.append(
            f"N={n}: engine/sqlite {eng:,.0f}/s (need >= 2,000); engine/mesh "
            f"{results['engine/mesh'][n]:,.0f}/s (need >= 1,000); engine/langgraph at SQLite "
            f"checkpointing = {eng / lg:.1f}x (need >= 10x)"
        )
    return lines


def test_orchestration_throughput(benchmark: Any, bench_report: list[str]) -> None:
    results = benchmark.pedantic(measure, rounds=1, iterations=1)
    bench_report.extend(["orchestration (benches/bench_orchestration.py):", *report(results)])
    benchmark.extra_info.update({k: {str(n): v for n, v in r.items()} for k, r in results.items()})
    big = max(SIZES)
    assert results["engine/sqlite"][big] >= 2_000
    assert results["engine/mesh"][big] >= 1_000
    for n in SIZES:
        assert results["engine/sqlite"][n] >= 10 * results["langgraph/sqlite"][n]


if __name__ == "__main__":
    print("\n".join(report(measure())))
