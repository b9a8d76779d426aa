"""Streamed calls: an async iterator of deltas whose usage and cost settle at the end.

::

    async for delta in llm.stream(messages):      # leaving the loop closes the HTTP stream
        print(delta.text, end="")

    async with llm.stream(messages) as s:         # or: closed deterministically on exit
        async for delta in s:
            ...
    s.result.usage.total_tokens                   # the whole reply, settled

Each ``async for`` gets its own generator that only the loop holds, so ``break`` drops it
and the event loop closes it (and the HTTP stream) at once; cancelling the task closes it
through the same ``finally``. A cached result replays as deltas.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Final

import msgspec

from engine.errors import LLMError
from engine.llm.base import ChatResult, StreamDelta, ToolCallDelta, ToolCallRequest, Usage
from engine.llm.request import ChatRequest, estimate_tokens
from engine.llm.telemetry import now

if TYPE_CHECKING:
    from engine.llm.pipeline import BaseLLM, CallContext

__all__ = ["ChatStream", "ToolCallAccumulator", "replay"]

_REPLAY_CHARS: Final = 16


class ToolCallAccumulator:
    """Joins streamed tool-call fragments by index into whole calls."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}

    def add(self, d: ToolCallDelta) -> None:
        c = self._calls.get(d.index)
        if c is None:
            if len(self._calls) >= 128:
                raise LLMError("a streamed reply opened more than 128 tool calls")
            c = self._calls[d.index] = ["", "", ""]
        if d.id:
            c[0] = d.id
        if d.name:
            c[1] += d.name
        c[2] += d.arguments

    def calls(self) -> list[ToolCallRequest]:
        return [
            ToolCallRequest(c[0] or f"call_{i}", c[1], c[2] or "{}")
            for i, c in sorted(self._calls.items())
        ]


def replay(result: ChatResult) -> list[StreamDelta]:
    """A finished result as deltas (what a cached stream yields)."""
    text = result.text
    out = [
        StreamDelta(text=text[i : i + _REPLAY_CHARS]) for i in range(0, len(text), _REPLAY_CHARS)
    ]
    if result.tool_calls:
        out.append(
            StreamDelta(
                tool_calls=tuple(
                    ToolCallDelta(i, c.id, c.name, c.arguments)
                    for i, c in enumerate(result.tool_calls)
                )
            )
        )
    out.append(StreamDelta(finish_reason=result.finish_reason or "stop"))
    return out


class ChatStream:
    """A streamed call; iterate it once. ``result`` is the whole reply once it ended."""

    __slots__ = ("__weakref__", "_ctx", "_gen", "_llm", "_req", "_started", "result")

    def __init__(self, llm: BaseLLM, req: ChatRequest, ctx: CallContext) -> None:
        self._llm = llm
        self._req = req
        self._ctx = ctx
        self._gen: weakref.ref[AsyncGenerator[StreamDelta, None]] | None = None
        self._started = False
        self.result: ChatResult | None = None

    def __aiter__(self) -> AsyncIterator[StreamDelta]:
        if self._started:
            raise LLMError("a ChatStream can be iterated only once")
        self._started = True
        gen = self._run()
        self._gen = weakref.ref(gen)  # weak: `break` must drop the generator and close it
        return gen

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the stream and close its HTTP response (safe to call twice)."""
        gen = self._gen() if self._gen is not None else None
        if gen is not None:
            await gen.aclose()

    async def collect(self) -> ChatResult:
        """Consume the whole stream and return the settled result."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def _run(self) -> AsyncGenerator[StreamDelta, None]:
        llm, req, ctx = self._llm, self._req, self._ctx
        t0 = now()
        cache = llm._use_cache(req, ctx)
        probe = None
        if cache is not None:
            hit, probe = llm._cache_get(req, cache, t0)
            if hit is not None:
                llm.ledger.record(ctx.who, hit.model, hit.usage, 0.0, cached=True)
                self.result = hit
                for d in replay(hit):
                    yield d
                return
        req, held = llm._reserve(req, ctx)
        provider, model = llm._label(req.kind)
        span = llm.telemetry.start(
            model, provider=provider, kind=req.kind, max_tokens=req.max_tokens,
            temperature=req.temperature, operation="chat",
        )  # fmt: skip
        parts: list[str] = []
        final: ChatResult | None = None
        it = llm._open_stream(req, span)
        try:
            async for item in it:
                if isinstance(item, ChatResult):
                    final = item
                    continue
                if item.text:
                    parts.append(item.text)
                yield item
            if final is None:
                raise LLMError("the stream ended without a final result")
        except BaseException as exc:  # error, `break` (GeneratorExit) or cancellation
            # Charge what was seen, if anything was; else give the reservation back.
            if parts:
                used = Usage(estimate_tokens(req), -(-sum(map(len, parts)) // 4))
                cost = llm.prices.cost(model, used)
                held.settle(used.total_tokens, cost)
                llm.ledger.record(ctx.who, model, used, cost)
            else:
                held.release()
            if not isinstance(exc, asyncio.CancelledError | GeneratorExit):  # not failures
                llm.telemetry.call_failed(provider, model, req.kind)
            span.fail(exc)
            raise
        finally:
            await it.aclose()  # type: ignore[attr-defined]  # close the HTTP stream now
        assert final is not None
        llm._settle(req, ctx, held, final)
        final.latency = now() - t0
        span.finish(final, req.kind)
        llm.telemetry.ok(final, req.kind, final.latency)
        if probe is not None and cache is not None and final.finish_reason != "length":
            cache.fill(probe, msgspec.structs.replace(final))
        self.result = final
