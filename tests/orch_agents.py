"""Workers, plans and scripted models shared by the orchestration tests (and their subprocesses).

Subprocesses (``engine run --workers tests.orch_agents:CountingWorker --llm
tests.orch_agents:counting_llm``, mesh nodes) import this module too, so everything a child
needs is configured through environment variables:

- ``ORCH_LOG``: a file each model call and each worker execution appends one line to
  (``call <kind> <input digest>`` / ``exec <subtask>``), so a test counts them across
  processes (``O_APPEND`` writes of one short line are atomic);
- ``ORCH_N``/``ORCH_LAYERS``: the plan ``counting_llm`` produces;
- ``ORCH_DELAY``: seconds each worker execution sleeps (keeps a job running long enough to
  be killed in the middle).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from typing import Any

from engine import Agent, Context, handler
from engine.llm import Reply, Rule, ScriptedCall, ScriptedProvider
from engine.orchestration import (
    Plan,
    ProgressReport,
    Subtask,
    SubtaskRequest,
    SubtaskResult,
    default_llm,
)
from engine.orchestration.ledgers import digest

PROGRESS = ProgressReport(is_request_satisfied=False, is_in_loop=False, is_progress_being_made=True)
STALLED = ProgressReport(
    is_request_satisfied=False, is_in_loop=False, is_progress_being_made=False, reason="stuck"
)


def chain(n: int, cap: str = "work", prefix: str = "s") -> Plan:
    """``n`` subtasks, each depending on the previous one."""
    return Plan(
        facts=["a chain"],
        subtasks=[
            Subtask(
                id=f"{prefix}{i}",
                description=f"step {prefix}{i}",
                capability=cap,
                depends_on=[f"{prefix}{i - 1}"] if i else [],
            )
            for i in range(n)
        ],
    )


def layered(n: int, layers: int, cap: str = "work") -> Plan:
    """``n`` subtasks in ``layers`` layers; each depends on two of the previous layer."""
    width = max(1, n // layers)
    subs = []
    for layer in range(layers):
        for i in range(width):
            deps = [f"L{layer - 1}.{i}", f"L{layer - 1}.{(i + 1) % width}"] if layer else []
            subs.append(
                Subtask(
                    id=f"L{layer}.{i}",
                    description=f"layer {layer} item {i}",
                    capability=cap,
                    depends_on=sorted(set(deps)),
                )
            )
    return Plan(facts=[f"{n} subtasks in {layers} layers"], subtasks=subs)


def scripted(
    plan: Plan | Callable[[ScriptedCall], Any],
    *,
    progress: ProgressReport | Callable[[ScriptedCall], Any] = PROGRESS,
    answer: str = "the final answer",
    act: str | Callable[[ScriptedCall], Any] = "worker output",
) -> ScriptedProvider:
    """A scripted model for orchestration: plan, progress, summarize, and worker calls."""
    plan_reply = Reply(parsed=plan) if isinstance(plan, Plan) else plan
    prog = Reply(parsed=progress) if isinstance(progress, ProgressReport) else progress
    return ScriptedProvider(
        [
            Rule(plan_reply, kind="plan"),
            Rule(prog, kind="progress"),
            Rule(Reply(answer), kind="summarize"),
        ],
        default=act,
    )


class EchoWorker(Agent):
    """One model call per subtask (the process's default model), echoes inputs."""

    capabilities = ("work",)

    @handler
    async def on_subtask(self, req: SubtaskRequest, ctx: Context) -> SubtaskResult:
        res = await default_llm().chat(req.prompt(), kind="act", budget=req.budget())
        out = f"{req.subtask}<-{','.join(sorted(req.inputs))}:{res.text}"
        return SubtaskResult(output=out, tokens=res.usage.total_tokens, calls=1)


class PlainWorker(Agent):
    """No model call: returns a str (the simplest worker a user writes)."""

    capabilities = ("plain",)

    @handler
    def on_subtask(self, req: SubtaskRequest, ctx: Context) -> str:
        return f"plain {req.subtask}"


class FlakyWorker(Agent):
    """Fails the first ``fails`` attempts of every subtask, then answers."""

    capabilities = ("flaky",)
    fails = 1
    seen: dict[str, int] = {}

    @handler
    def on_subtask(self, req: SubtaskRequest, ctx: Context) -> str:
        n = FlakyWorker.seen[req.subtask] = FlakyWorker.seen.get(req.subtask, 0) + 1
        if n <= self.fails:
            raise RuntimeError(f"flaky failure {n} of {req.subtask}")
        return f"ok {req.subtask} after {n}"


class FailWorker(Agent):
    """Fails every subtask whose description contains 'fail'."""

    capabilities = ("work",)

    @handler
    def on_subtask(self, req: SubtaskRequest, ctx: Context) -> str:
        if "fail" in req.description:
            raise ValueError(f"cannot do {req.subtask}")
        return f"done {req.subtask}"


class GateWorker(Agent):
    """Waits on ``GateWorker.gate`` (an asyncio.Event set by the test) before answering."""

    capabilities = ("gated",)
    gate: asyncio.Event | None = None
    entered = 0

    @handler
    async def on_subtask(self, req: SubtaskRequest, ctx: Context) -> str:
        GateWorker.entered += 1
        assert GateWorker.gate is not None
        await GateWorker.gate.wait()
        return f"gated {req.subtask}"


class BadReplyWorker(Agent):
    """Replies with the wrong type, or hostile usage figures."""

    capabilities = ("bad",)

    @handler
    def on_subtask(self, req: SubtaskRequest, ctx: Context) -> Any:
        if "number" in req.description:
            return 42
        return SubtaskResult(output="x" * 100_000, tokens=-5, cost=float("nan"), calls=-1)


# -- cross-process counting (SIGKILL/resume and mesh tests) -------------------------------


def log_line(line: str) -> None:
    path = os.environ.get("ORCH_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def call_digest(messages: list[dict[str, Any]]) -> str:
    """What the orchestrator records as a model call's ``input_digest``."""
    return digest("\n".join(str(m.get("content") or "") for m in messages))


def counting_llm() -> ScriptedProvider:
    """``--llm`` factory: a layered plan (ORCH_N, ORCH_LAYERS); logs every call to ORCH_LOG."""
    n = int(os.environ.get("ORCH_N", "60"))
    layers = int(os.environ.get("ORCH_LAYERS", "6"))
    plan = layered(n, layers, cap="count")

    def logged(reply: Any) -> Callable[[ScriptedCall], Any]:
        def answer(call: ScriptedCall) -> Any:
            log_line(f"call {call.kind} {call_digest(call.messages)}")
            return reply

        return answer

    return ScriptedProvider(
        [
            Rule(logged(Reply(parsed=plan)), kind="plan"),
            Rule(logged(Reply(parsed=PROGRESS)), kind="progress"),
            Rule(logged(Reply("counted answer")), kind="summarize"),
        ],
        default=_act,
    )


def _act(call: ScriptedCall) -> str:
    """A worker's model call: logged with the subtask it is for."""
    m = re.search(r"^Your subtask \((\S+)\):", call.last, re.M)
    log_line(f"call {call.kind} {m.group(1) if m else '?'}")
    return "ok"


class CountingWorker(Agent):
    """Logs each execution, makes one model call, sleeps ORCH_DELAY (capability 'count')."""

    capabilities = ("count",)

    @handler
    async def on_subtask(self, req: SubtaskRequest, ctx: Context) -> SubtaskResult:
        log_line(f"exec {req.subtask}")
        delay = float(os.environ.get("ORCH_DELAY", "0"))
        if delay:
            await asyncio.sleep(delay)
        res = await default_llm().chat(req.prompt(), kind="act", budget=req.budget())
        return SubtaskResult(
            output=f"{req.subtask}:{res.text}", tokens=res.usage.total_tokens, calls=1
        )


_node_llm = ScriptedProvider(default="node says ok")


class MeshWorker(Agent):
    """A worker for mesh nodes: its own scripted model, held to the request's budget grant.

    Its output names the node's pid and the trace context the request arrived with.
    """

    capabilities = ("mesh",)

    @handler
    async def on_subtask(self, req: SubtaskRequest, ctx: Context) -> SubtaskResult:
        log_line(f"exec {req.subtask} {os.getpid()}")
        delay = float(os.environ.get("ORCH_DELAY", "0"))
        if delay:
            await asyncio.sleep(delay)
        res = await _node_llm.chat(req.prompt(), kind="act", budget=req.budget())
        return SubtaskResult(
            output=f"{req.subtask}@{os.getpid()} grant={req.grant} tp={ctx.traceparent}",
            tokens=res.usage.total_tokens,
            calls=1,
        )
