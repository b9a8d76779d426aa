"""What every LLM does around the model call: cache, budget, span, metrics, accounting.

:class:`BaseLLM` implements ``chat``, ``stream`` and ``run_tools`` once; a provider or the
router supplies only ``_send`` (one logical call) and ``_open_stream``. Order of one call:
check the request, look in the cache, reserve the budgets (refusal sends nothing), open the
span, send, settle the budgets with the real usage (release them on error), record metrics
and usage, fill the cache.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from time import perf_counter as _clock  # telemetry.now's clock, without its frame
from typing import TYPE_CHECKING, Any

import msgspec

from engine.errors import BudgetExceeded, PriceUnknown
from engine.llm.accounting import (
    Attribution,
    UsageLedger,
    ambient_attribution,
    current_attribution,
)
from engine.llm.base import ChatResult, Messages, StreamDelta, ToolsArg, Usage
from engine.llm.budget import NO_HOLD as _NO_HOLD
from engine.llm.budget import Budget, Reservation, reserve
from engine.llm.cache import LLMCache, Probe
from engine.llm.prices import Price, PriceTable
from engine.llm.request import ChatRequest, checked_request, estimate_tokens
from engine.llm.telemetry import NOOP_SPAN as _NO_SPAN
from engine.llm.telemetry import CallSpan, Telemetry, now
from engine.observe.audit import BUDGET_REFUSED

if TYPE_CHECKING:
    from engine.llm.stream import ChatStream
    from engine.observe.audit import AuditLog
    from engine.observe.metrics import Metrics
    from engine.tools import Tool, ToolRegistry

__all__ = ["BaseLLM", "CallContext"]

log = logging.getLogger("engine.llm")


class CallContext(msgspec.Struct, gc=False):
    """Per-call settings that are not part of the request sent to the model."""

    budgets: tuple[Budget, ...] = ()
    cache: bool | None = None
    who: Attribution = Attribution()


def _budgets(budget: Budget | Sequence[Budget] | None) -> tuple[Budget, ...]:
    if budget is None:
        return ()
    if isinstance(budget, Budget):
        return (budget,)
    out = tuple(budget)
    for b in out:
        if not isinstance(b, Budget):
            raise TypeError(f"budget must be a Budget or a sequence of them, got {b!r}")
    return out


class BaseLLM:
    """The shared call surface (see :class:`~engine.llm.LLM`); subclasses send.

    ``prices`` (a :class:`~engine.llm.PriceTable` or a mapping of overrides) gives cost;
    ``cache`` (an :class:`~engine.llm.LLMCache`, or True for a default one) serves
    deterministic calls; ``audit`` receives ``budget.refused`` records; ``metrics`` and
    ``tracer_provider`` receive metrics and spans; ``default_max_tokens`` bounds the reply
    of a call that has a token or cost budget but no ``max_tokens``.
    """

    #: gen_ai.provider.name of this LLM ("" for the router: it names the answering one).
    provider_name: str = ""

    def __init__(
        self,
        *,
        prices: PriceTable | Mapping[str, Price | tuple[float, float]] | None = None,
        cache: LLMCache | bool | None = None,
        audit: AuditLog | None = None,
        metrics: Metrics | None = None,
        tracer_provider: Any = None,
        spans: bool = True,
        ledger: UsageLedger | None = None,
        default_max_tokens: int = 1024,
    ) -> None:
        if isinstance(default_max_tokens, bool) or not (
            isinstance(default_max_tokens, int) and default_max_tokens > 0
        ):
            raise ValueError(f"default_max_tokens must be a positive int, got {default_max_tokens}")
        self.prices = prices if isinstance(prices, PriceTable) else PriceTable(prices)
        if cache is True:
            cache = LLMCache()
        self.cache: LLMCache | None = cache if isinstance(cache, LLMCache) else None
        self.audit = audit
        self.telemetry = Telemetry(metrics, tracer_provider, spans=spans)
        self.ledger = ledger if ledger is not None else UsageLedger()
        self.default_max_tokens = default_max_tokens

    # -- what subclasses provide -----------------------------------------------------------
    def _scope(self, kind: str) -> str:
        """What the cache key calls the model(s) a call of ``kind`` goes to."""
        raise NotImplementedError

    def _price_bound(self, kind: str) -> Price | None:
        """The highest price a call of ``kind`` may be charged (None: unknown)."""
        raise NotImplementedError

    def _label(self, kind: str) -> tuple[str, str]:
        """(provider, model) to name a call of ``kind`` before it is sent."""
        raise NotImplementedError

    async def _send(self, req: ChatRequest, span: CallSpan) -> ChatResult:
        raise NotImplementedError

    #: True when :meth:`_answer` may give the reply without awaiting :meth:`_send`.
    _at_once: bool = False

    def _answer(self, req: ChatRequest) -> ChatResult | None:
        """The reply at once, exactly as ``_send`` would give it, or None to await ``_send``
        (an LLM that never waits, e.g. the scripted one, sets ``_at_once``)."""
        return None

    def _open_stream(
        self, req: ChatRequest, span: CallSpan
    ) -> AsyncIterator[StreamDelta | ChatResult]:
        """Deltas, then one final ChatResult (text, tool calls, usage, provider, model)."""
        raise NotImplementedError

    # -- the call surface ------------------------------------------------------------------
    async def chat(
        self,
        messages: Messages,
        *,
        tools: ToolsArg = None,
        response_format: type[Any] | None = None,
        kind: str = "default",
        budget: Budget | Sequence[Budget] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
        cache: bool | None = None,
        agent: str | None = None,
        job: str | None = None,
        tenant: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ChatResult:
        """One chat completion; see :class:`~engine.llm.LLM` for the arguments."""
        req = checked_request(
            messages, tools, response_format, kind, max_tokens, temperature, seed, top_p, stop,
            timeout, extra,
        )  # fmt: skip
        # PERF: no budget and no attribution given (a worker's usual call) skip the two
        # helpers' frames: ~500 instructions per call (benches/llm_call_instructions.py)
        ctx = CallContext(
            () if budget is None else _budgets(budget),
            cache,
            ambient_attribution()
            if agent is None and job is None and tenant is None
            else current_attribution(agent, job, tenant),
        )
        if req.response_format is not None:
            from engine.llm.structured import chat_structured

            return await chat_structured(self, req, ctx)
        return await self._call(req, ctx)

    def stream(
        self,
        messages: Messages,
        *,
        tools: ToolsArg = None,
        kind: str = "default",
        budget: Budget | Sequence[Budget] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
        cache: bool | None = None,
        agent: str | None = None,
        job: str | None = None,
        tenant: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ChatStream:
        """Stream the reply: ``async for delta in llm.stream(...)``; see :class:`ChatStream`."""
        from engine.llm.stream import ChatStream

        req = checked_request(
            messages, tools, None, kind, max_tokens, temperature, seed, top_p, stop, timeout,
            extra,
        )  # fmt: skip
        ctx = CallContext(_budgets(budget), cache, current_attribution(agent, job, tenant))
        return ChatStream(self, req, ctx)

    async def run_tools(
        self,
        messages: Messages,
        *,
        tools: ToolRegistry | Sequence[Tool],
        max_steps: int = 8,
        kind: str = "default",
        budget: Budget | Sequence[Budget] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        cache: bool | None = None,
        agent: str | None = None,
        job: str | None = None,
        tenant: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ChatResult:
        """Let the model call ``tools`` until it answers; see :mod:`engine.llm.tool_loop`."""
        from engine.llm.tool_loop import run_tools

        return await run_tools(
            self,
            messages,
            tools,
            max_steps=max_steps,
            kind=kind,
            budget=budget,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            timeout=timeout,
            cache=cache,
            agent=agent,
            job=job,
            tenant=tenant,
            extra=extra,
        )

    # -- the pipeline ----------------------------------------------------------------------
    def _use_cache(self, req: ChatRequest, ctx: CallContext) -> LLMCache | None:
        c = self.cache
        if c is None or ctx.cache is False or not req.cacheable_tools:
            return None
        return c if (ctx.cache or req.deterministic) else None

    def _cache_get(
        self, req: ChatRequest, cache: LLMCache, t0: float
    ) -> tuple[ChatResult | None, Probe]:
        """A hit (as this call's result), else None; and the probe to fill on a miss (the
        request as asked for is the key: not the one a budget's reservation completes)."""
        hit, probe = cache.probe(req, self._scope(req.kind))
        if hit is None:
            self.telemetry.cache("miss")
            return None, probe
        cached, how = hit
        self.telemetry.cache(how or "miss")
        result = msgspec.structs.replace(
            cached, cached=how, latency=now() - t0, cost=0.0, usage=Usage()
        )
        self.telemetry.ok(result, req.kind, result.latency)
        return result, probe

    def _reserve(self, req: ChatRequest, ctx: CallContext) -> tuple[ChatRequest, Reservation]:
        """Reserve the estimate on the call's budgets (raises BudgetExceeded, sends nothing)."""
        budgets = ctx.budgets
        # PERF: one loop, not two any() generators: ~2,000 instructions less
        # (callgrind, benches/llm_call_instructions.py BUDGET=tokens)
        sized = priced = False  # some budget limits tokens or cost / cost
        for b in budgets:
            if b.cost is not None:
                sized = priced = True
                break
            if b.tokens is not None:
                sized = True
        if sized:
            if req.max_tokens is None:  # the reservation must bound the reply
                req = msgspec.structs.replace(req, max_tokens=self.default_max_tokens)
            completion = req.max_tokens or self.default_max_tokens
            prompt = estimate_tokens(req)
            est_cost = 0.0
            if priced:
                price = self._price_bound(req.kind)
                if price is None:
                    _, model = self._label(req.kind)
                    raise PriceUnknown(
                        f"a cost budget applies but {model!r} has no price; "
                        "add it with prices={...}"
                    )
                est_cost = price.cost(prompt, completion)
            tokens = prompt + completion
        else:
            tokens, est_cost = 0, 0.0
        try:
            return req, reserve(budgets, tokens, est_cost)
        except BudgetExceeded as exc:
            self._refused(exc, req, ctx)
            raise

    def _refused(self, exc: BudgetExceeded, req: ChatRequest, ctx: CallContext) -> None:
        provider, model = self._label(req.kind)
        self.telemetry.refused(provider, model, req.kind)
        if self.audit is not None:
            self.audit.append(
                BUDGET_REFUSED,
                {
                    "budget": exc.budget,
                    "limit": exc.limit_kind,
                    "limit_value": exc.limit,
                    "used": exc.used,
                    "estimate": exc.estimate,
                    "kind": req.kind,
                    "model": model,
                    "agent": ctx.who.agent,
                    "job": ctx.who.job,
                    "tenant": ctx.who.tenant,
                },
            )
        log.info("budget refused an LLM call", extra={"budget": exc.budget, "kind": req.kind})

    def _settle(
        self, req: ChatRequest, ctx: CallContext, held: Reservation, result: ChatResult
    ) -> None:
        result.cost = cost = self.prices.cost(result.model, result.usage)
        if held is not _NO_HOLD:
            held.settle(result.usage.total_tokens, cost)
        self.ledger.record(ctx.who, result.model, result.usage, cost)

    async def _call(self, req: ChatRequest, ctx: CallContext) -> ChatResult:
        """One call through the whole pipeline (structured output and tool loops use it)."""
        t0 = _clock()
        cache = self._use_cache(req, ctx) if self.cache is not None else None
        probe = None
        if cache is not None:
            hit, probe = self._cache_get(req, cache, t0)
            if hit is not None:
                self.ledger.record(ctx.who, hit.model, hit.usage, 0.0, cached=True)
                return hit
        # PERF: no budget, no live tracer (the common case) skips the reservation and the
        # span's labels and attributes: ~1.5 us of a ~7 us scripted call (cProfile and
        # wall clock over 50,000 ScriptedProvider.chat calls).
        held = _NO_HOLD
        if ctx.budgets:
            req, held = self._reserve(req, ctx)
        tel = self.telemetry
        span = _NO_SPAN
        if tel.tracing:
            provider, model = self._label(req.kind)
            span = tel.start(
                model,
                provider=provider,
                kind=req.kind,
                max_tokens=req.max_tokens,
                temperature=req.temperature,
            )
        try:
            # PERF: no coroutine to create and drive for a reply given at once: ~700
            # instructions per scripted call (benches/llm_call_instructions.py)
            result = self._answer(req) if self._at_once else None
            if result is None:
                result = await self._send(req, span)
        except BaseException as exc:
            held.release()
            span.fail(exc)
            if not isinstance(exc, asyncio.CancelledError):  # cancelled: not a failure
                provider, model = self._label(req.kind)
                tel.call_failed(provider, model, req.kind)
            raise
        # PERF: _settle inline: ~600 instructions per call (benches/llm_call_instructions.py)
        usage = result.usage
        result.cost = cost = self.prices.cost(result.model, usage)
        if held is not _NO_HOLD:
            held.settle(usage.prompt_tokens + usage.completion_tokens, cost)
        self.ledger.record(ctx.who, result.model, usage, cost)
        result.latency = _clock() - t0
        if span is not _NO_SPAN:
            span.finish(result, req.kind)
        tel.ok(result, req.kind, result.latency)
        if probe is not None and cache is not None and result.finish_reason != "length":
            cache.fill(probe, msgspec.structs.replace(result))
        return result
