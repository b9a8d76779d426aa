"""``ReActAgent``: a general worker that reasons, acts with tools and observes, step by step.

Thought → action → observation, through ``llm.run_tools``: the model's text is the thought,
its tool calls the actions, the tool results the observations; the loop ends when the
model answers without calling a tool, or fails at ``max_steps``. The whole transcript is
returned with the result and lands in the job's progress ledger.

Subclass it to set the tools and capabilities, or use it as the default worker:

.. code-block:: python

    class Researcher(ReActAgent):
        capabilities = ("research",)
        tools = (RetrievalTool(retriever).tool, web_search)
        max_steps = 6

The model comes from the class attribute ``llm``, else :func:`default_llm` (what the
process set with :func:`set_default_llm`, e.g. the ``engine run`` command).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from engine.agents import Agent, Context, handler
from engine.errors import MaxStepsExceeded, OrchestrationError
from engine.orchestration.worker import SubtaskRequest, SubtaskResult
from engine.tools import Tool, ToolRegistry

__all__ = ["ReActAgent", "default_llm", "set_default_llm", "transcript_lines"]

_default: Any = None

_SYSTEM = (
    "You are a worker agent. Think step by step. When a tool helps, call it and use what "
    "it returns; when you know the answer, reply with it and call no tool."
)


def set_default_llm(llm: Any) -> None:
    """The model workers of this process use when their class names none (None: unset)."""
    global _default
    _default = llm


def default_llm() -> Any:
    """The process's default model (:func:`set_default_llm`), else an error saying so."""
    if _default is None:
        raise OrchestrationError(
            "no model for this worker: set the class attribute llm, or call "
            "engine.orchestration.set_default_llm(llm) in the worker's process"
        )
    return _default


def transcript_lines(messages: Sequence[dict[str, Any]], limit: int = 2_000) -> list[str]:
    """A tool loop's messages as ``thought:``/``action:``/``observation:``/``answer:`` lines."""
    out: list[str] = []
    for m in messages:
        role = m.get("role")
        content = str(m.get("content") or "")[:limit]
        calls = m.get("tool_calls") or []
        if role == "assistant" and calls:
            if content:
                out.append(f"thought: {content}")
            for c in calls:
                fn = c.get("function", {})
                out.append(f"action: {fn.get('name')}({str(fn.get('arguments', ''))[:limit]})")
        elif role == "assistant":
            out.append(f"answer: {content}")
        elif role == "tool":
            out.append(f"observation: {content}")
    return out


class ReActAgent(Agent):
    """A worker that answers a subtask with ``llm.run_tools`` over its ``tools``."""

    capabilities: ClassVar[tuple[str, ...]] = ("general",)
    #: The model (an engine.llm provider or router); None: :func:`default_llm`.
    llm: ClassVar[Any] = None
    #: ``@tool`` functions or a ToolRegistry; empty: the model answers in one call.
    tools: ClassVar[Sequence[Tool] | ToolRegistry] = ()
    max_steps: ClassVar[int] = 8
    system_prompt: ClassVar[str] = _SYSTEM
    #: Call kind of the worker's model calls (routes them in a ModelRouter).
    kind: ClassVar[str] = "act"

    @handler
    async def on_subtask(self, req: SubtaskRequest, ctx: Context) -> SubtaskResult:
        llm = self.llm if self.llm is not None else default_llm()
        messages = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": req.prompt()},
        ]
        who = {"agent": str(self.id), "job": req.job, "tenant": req.tenant or None}
        budget = req.budget()
        tools = self.tools
        if not tools or (isinstance(tools, ToolRegistry) and not len(tools)):
            res = await llm.chat(messages, kind=self.kind, budget=budget, **who)
            lines = [f"answer: {res.text[:2_000]}"]
            calls = 1
        else:
            try:
                res = await llm.run_tools(
                    messages,
                    tools=tools if isinstance(tools, ToolRegistry) else list(tools),
                    max_steps=self.max_steps,
                    kind=self.kind,
                    budget=budget,
                    **who,
                )
            except MaxStepsExceeded as exc:
                steps = transcript_lines(getattr(exc.result, "transcript", []))
                raise OrchestrationError(
                    f"{type(self).__name__} reached its step limit ({self.max_steps}) "
                    f"without an answer; last steps: {' | '.join(steps[-3:])[:500]}"
                ) from exc
            lines = transcript_lines(res.transcript)
            calls = sum(1 for m in res.transcript if m.get("role") == "assistant")
        return SubtaskResult(
            output=res.text,
            tokens=res.usage.total_tokens,
            cost=res.cost,
            calls=calls,
            transcript=lines,
        )
