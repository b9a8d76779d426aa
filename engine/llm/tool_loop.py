"""The tool-calling loop: send the tools, run what the model calls, repeat until it answers.

Each step is one ``chat`` through the whole pipeline (cache, budgets, span, metrics). The
calls of one step run concurrently through the :class:`~engine.tools.ToolRegistry` (so the
runtime's middleware and hooks see them); a call that fails (unknown tool, arguments that
are not JSON or do not validate, a timeout, an exception) becomes a tool result naming the
error, which the model sees on the next step. Every message the loop adds is in the
result's ``transcript``; usage and cost are summed over the steps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from engine.errors import MaxStepsExceeded, ToolError
from engine.llm.base import ChatResult, Message, Messages, ToolCallRequest, Usage
from engine.llm.request import make_request
from engine.observe.logs import redact
from engine.tools import Tool, ToolRegistry

if TYPE_CHECKING:
    from engine.llm.budget import Budget
    from engine.llm.pipeline import BaseLLM

__all__ = ["run_tools", "tool_result_text"]

log = logging.getLogger("engine.llm")
_MAX_RESULT: int = 64 * 1024  # characters of one tool result sent back to the model


def tool_result_text(value: Any) -> str:
    """A tool's return value as the text of a ``tool`` message (JSON unless a str)."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = msgspec.json.encode(value).decode()
        except (TypeError, msgspec.EncodeError):
            text = str(value)
    return text if len(text) <= _MAX_RESULT else text[:_MAX_RESULT] + "...[truncated]"


async def _run_one(registry: ToolRegistry, call: ToolCallRequest) -> str:
    try:
        value = await registry.call(call.name, call.arguments, call_id=call.id)
    except ToolError as exc:  # unknown tool, invalid arguments, timeout
        return f"error: {exc}"
    except Exception as exc:
        log.warning("tool %s raised %s", call.name, type(exc).__name__)
        return f"error: {type(exc).__name__}: {redact(str(exc))[:2000]}"
    return tool_result_text(value)


async def run_tools(
    llm: BaseLLM,
    messages: Messages,
    tools: ToolRegistry | Sequence[Tool],
    *,
    max_steps: int = 8,
    budget: Budget | Sequence[Budget] | None = None,
    **options: Any,
) -> ChatResult:
    """Loop until the model answers without calling a tool; see the module docs.

    Raises :class:`~engine.errors.MaxStepsExceeded` (with the last result and the whole
    transcript) when the model still calls tools after ``max_steps`` steps.
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    own = not isinstance(tools, ToolRegistry)
    if isinstance(tools, ToolRegistry):
        registry = tools
    else:
        registry = ToolRegistry()
        for t in tools:
            if not isinstance(t, Tool):
                raise TypeError(f"run_tools needs @tool functions or a ToolRegistry, got {t!r}")
            registry.add(t)
    if not len(registry):
        raise ValueError("run_tools needs at least one tool")
    convo: list[Message] = [
        dict(m) if isinstance(m, Mapping) else m
        for m in make_request(messages).messages  # checked like any chat
    ]
    transcript: list[Message] = []
    usage, cost = Usage(), 0.0
    try:
        for _ in range(max_steps):
            r = await llm.chat(convo, tools=registry, budget=budget, **options)
            usage, cost = usage + r.usage, cost + r.cost
            msg = r.message()
            convo.append(msg)
            transcript.append(msg)
            r.usage, r.cost, r.transcript = usage, cost, transcript
            if not r.tool_calls:
                return r
            outputs = await asyncio.gather(*(_run_one(registry, c) for c in r.tool_calls))
            for call, content in zip(r.tool_calls, outputs, strict=True):
                m: Message = {"role": "tool", "tool_call_id": call.id, "content": content}
                convo.append(m)
                transcript.append(m)
        raise MaxStepsExceeded(max_steps, r)
    finally:
        if own:
            registry.close()
