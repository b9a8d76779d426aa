"""The orchestration benchmark's worker, its scripted model and plans (imported by nodes too).

Workload: N subtasks in ``LAYERS`` dependency layers (each subtask depends on two of the
previous layer), each a worker making one model call on a zero-latency scripted provider,
aggregated at the end by one ``summarize`` call.
"""

from __future__ import annotations

from engine import Agent, Context, handler
from engine.llm import Reply, Rule, ScriptedProvider
from engine.orchestration import Plan, ProgressReport, Subtask, SubtaskRequest, SubtaskResult

LAYERS = 10

#: The workers' model in each process (a node has its own).
worker_llm = ScriptedProvider(default="result")


def plan(n: int, layers: int = LAYERS) -> Plan:
    width = n // layers
    subs = []
    for layer in range(layers):
        for i in range(width):
            deps = sorted({f"L{layer - 1}.{i}", f"L{layer - 1}.{(i + 1) % width}"}) if layer else []
            subs.append(
                Subtask(
                    id=f"L{layer}.{i}",
                    description=f"layer {layer} item {i}",
                    capability="work",
                    depends_on=deps,
                )
            )
    return Plan(facts=[f"{n} subtasks in {layers} layers"], subtasks=subs)


def orchestrator_llm(n: int) -> ScriptedProvider:
    progress = ProgressReport(
        is_request_satisfied=False, is_in_loop=False, is_progress_being_made=True
    )
    return ScriptedProvider(
        [
            Rule(Reply(parsed=plan(n)), kind="plan"),
            Rule(Reply(parsed=progress), kind="progress"),
            Rule(Reply("aggregated"), kind="summarize"),
        ],
        default="result",
    )


class BenchWorker(Agent):
    """One model call per subtask (capability ``work``)."""

    capabilities = ("work",)

    @handler
    async def on_subtask(self, req: SubtaskRequest, ctx: Context) -> SubtaskResult:
        res = await worker_llm.chat(req.prompt(), kind="act", budget=req.budget())
        return SubtaskResult(output=res.text, tokens=res.usage.total_tokens, calls=1)
