"""Instructions per ``chat`` call of the orchestration bench's worker, under callgrind.

The exact call a bench worker makes (``worker_llm.chat(prompt, kind="act", budget=...)`` on
a zero-latency ``ScriptedProvider(default="result")``): a warm-up, then ``CALLS`` calls
between two ``os.sched_yield`` markers, so callgrind's second dump holds exactly them.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --dump-before=sched_yield \\
        --callgrind-out-file=cg.out .venv/bin/python benches/llm_call_instructions.py
    grep totals: cg.out.2    # / CALLS = instructions per call

``BUDGET=none`` (the bench's in-process job without a budget: ``req.budget()`` is None),
``tokens`` (a job budget of tokens), ``grant`` (a remote worker's grant of tokens and
calls). ``ATTR=1`` runs the calls inside an ``attribution(agent=..., job=...)`` block.
"""

from __future__ import annotations

import asyncio
import os

from engine.llm import Budget, ScriptedProvider, attribution

CALLS = int(os.environ.get("CALLS", "2000"))
BUDGET = os.environ.get("BUDGET", "none")
PROMPT = "Overall task: the benchmark task\n\nYour subtask (L3.7): layer 3 item 7" + (
    "\n\nResult of L2.7:\nresult\n\nResult of L2.8:\nresult"
)


def _budget() -> Budget | None:
    if BUDGET == "none":
        return None
    if BUDGET == "tokens":
        return Budget(tokens=10**12, name="job:bench")
    if BUDGET == "grant":
        return Budget(tokens=10**12, calls=10**9, name="subtask grant")
    raise SystemExit(f"BUDGET must be none, tokens or grant, got {BUDGET!r}")


async def main() -> None:
    llm = ScriptedProvider(default="result")
    budget = _budget()
    for _ in range(200):
        await llm.chat(PROMPT, kind="act", budget=budget)
    os.sched_yield()  # callgrind dumps here: what follows is part 2
    for _ in range(CALLS):
        await llm.chat(PROMPT, kind="act", budget=budget)
    os.sched_yield()


if __name__ == "__main__":
    if os.environ.get("ATTR"):
        with attribution(agent="worker", job="j1", tenant="t"):
            asyncio.run(main())
    else:
        asyncio.run(main())
