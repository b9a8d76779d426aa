"""ModelRouter: routes calls by kind to a fallback chain of providers, with retries and breakers.

::

    router = ModelRouter(routes={
        "default": [OpenAIProvider("gpt-4o-mini"), OpenAIProvider("llama3", base_url=...)],
        "plan": [OpenAIProvider("gpt-4o"), OpenAIProvider("gpt-4o-mini")],
    })
    result = await router.chat(messages, kind="plan")

The router is itself an LLM (the same ``chat``/``stream``/``run_tools``), and owns what a
single provider does not: retries (:class:`RetryPolicy`), fallback along the chain, one
:class:`CircuitBreaker` per provider (shared by every route naming it), and the pipeline
around it all (cache, budgets, span, metrics, accounting). Per-provider concurrency and rate
limits live on the providers. Kinds without a route use ``"default"``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from engine.errors import AllProvidersFailed, LLMError, ProviderError
from engine.llm.base import ChatResult, StreamDelta
from engine.llm.breaker import BreakerPolicy, CircuitBreaker, State
from engine.llm.pipeline import BaseLLM
from engine.llm.prices import Price
from engine.llm.provider import Provider
from engine.llm.request import ChatRequest
from engine.llm.retry import RetryPolicy, RetryState
from engine.llm.telemetry import CallSpan, error_class

__all__ = ["ModelRouter"]

_DEFAULT: Final = "default"


class _BreakerOpen(LLMError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name}: circuit breaker open")


class ModelRouter(BaseLLM):
    """See the module docs.

    ``routes`` maps a call kind to its providers, first choice first (a ``"default"`` route
    is required). ``retry`` and ``breaker`` set the policies; ``timeout`` bounds each
    attempt (seconds; a call's ``timeout=`` overrides it, None leaves each provider's own).
    ``clock``, ``sleep`` and ``rng`` are injectable for tests. Other keywords configure the
    pipeline (``cache``, ``prices``, ``audit``, ``metrics``, ``tracer_provider``, ...).
    """

    def __init__(
        self,
        routes: Mapping[str, Sequence[Provider]],
        *,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        **pipeline: Any,
    ) -> None:
        super().__init__(**pipeline)
        if not isinstance(routes, Mapping) or _DEFAULT not in routes:
            raise ValueError('routes must be a mapping with a "default" route')
        self.routes: dict[str, tuple[Provider, ...]] = {}
        for kind, chain in routes.items():
            if not isinstance(kind, str) or not kind:
                raise ValueError(f"route kinds must be non-empty strs, got {kind!r}")
            items = tuple(chain)
            if not items:
                raise ValueError(f"route {kind!r} has no provider")
            for p in items:
                if not isinstance(p, Provider):
                    raise TypeError(f"route {kind!r}: {p!r} is not a provider")
            if len({p.name for p in items}) != len(items):
                raise ValueError(f"route {kind!r} names one provider twice")
            self.routes[kind] = items
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout!r}")
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.breakers: dict[str, CircuitBreaker] = {}
        seen: dict[str, Provider] = {}
        for chain in self.routes.values():
            for p in chain:
                if seen.setdefault(p.name, p) is not p:
                    raise ValueError(f"two different providers are named {p.name!r}")
                if p.name not in self.breakers:
                    self.breakers[p.name] = CircuitBreaker(
                        p.name, breaker, clock=clock, on_change=self._breaker_moved
                    )
                    self.telemetry.breaker(p.name, "closed")
        self._scopes = {k: "route:" + ",".join(p.name for p in c) for k, c in self.routes.items()}

    def __repr__(self) -> str:
        routes = ", ".join(f"{k}: {[p.name for p in c]}" for k, c in self.routes.items())
        return f"<ModelRouter {{{routes}}}>"

    @property
    def providers(self) -> list[Provider]:
        """Every provider, once each, in route order."""
        out: dict[str, Provider] = {}
        for chain in self.routes.values():
            for p in chain:
                out.setdefault(p.name, p)
        return list(out.values())

    async def aclose(self) -> None:
        """Close every provider's HTTP client."""
        for p in self.providers:
            close = getattr(p, "aclose", None)
            if close is not None:
                await close()

    async def __aenter__(self) -> ModelRouter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _breaker_moved(self, name: str, state: State) -> None:
        self.telemetry.breaker(name, state)

    # -- BaseLLM hooks ---------------------------------------------------------------------
    def _chain(self, kind: str) -> tuple[Provider, ...]:
        chain = self.routes.get(kind)
        return chain if chain is not None else self.routes[_DEFAULT]

    def _scope(self, kind: str) -> str:
        s = self._scopes.get(kind)
        return s if s is not None else self._scopes[_DEFAULT]

    def _price_bound(self, kind: str) -> Price | None:
        prices = [self.prices.get(p.model) for p in self._chain(kind)]
        if any(p is None for p in prices):
            return None
        return Price(max(p.input for p in prices if p), max(p.output for p in prices if p))

    def _label(self, kind: str) -> tuple[str, str]:
        first = self._chain(kind)[0]
        return first.provider_name, first.model

    # -- the fallback chain ----------------------------------------------------------------
    def _attempt_timeout(self, req: ChatRequest, state: RetryState) -> float | None:
        t = req.timeout or self.timeout
        left = state.time_left(self._clock())
        if left is not None:
            t = min(t, left) if t is not None else left
        return t if t is None or t > 0 else 0.001

    async def _on_failure(
        self, p: Provider, br: CircuitBreaker, state: RetryState, exc: ProviderError,
        req: ChatRequest, span: CallSpan,
    ) -> bool:  # fmt: skip
        """Book one failed attempt; sleep and return True to retry the same provider."""
        self.telemetry.failed(p.provider_name, p.model, req.kind, exc)
        if exc.retryable:
            br.failure()
        else:
            br.neutral()
            raise exc
        delay = state.next_delay(exc, self._clock(), self._rng)
        if delay is None or br.state != "closed":
            return False
        self.telemetry.retried(p.name)
        span.event(
            "retry",
            {"provider": p.name, "error.type": error_class(exc), "delay": delay,
             "attempt": state.failures + 1},
        )  # fmt: skip
        await self._sleep(delay)
        return br.allow()

    def _fallback(
        self, p: Provider, exc: BaseException, errors: list[tuple[str, BaseException]],
        span: CallSpan, last: bool,
    ) -> None:  # fmt: skip
        errors.append((p.name, exc))
        if not last:
            self.telemetry.fell_back(p.name)
            span.event("fallback", {"from": p.name, "error.type": error_class(exc)})

    async def _send(self, req: ChatRequest, span: CallSpan) -> ChatResult:
        chain = self._chain(req.kind)
        errors: list[tuple[str, BaseException]] = []
        for i, p in enumerate(chain):
            last = i == len(chain) - 1
            br = self.breakers[p.name]
            if not br.allow():
                span.event("breaker_open", {"provider": p.name})
                self._fallback(p, _BreakerOpen(p.name), errors, span, last)
                continue
            state = RetryState(self.retry, not last)
            while True:
                try:
                    result = await p.attempt(req, timeout=self._attempt_timeout(req, state))
                except ProviderError as exc:
                    if await self._on_failure(p, br, state, exc, req, span):
                        continue
                    self._fallback(p, exc, errors, span, last)
                    break
                except BaseException:
                    br.neutral()
                    raise
                br.success()
                return result
        raise AllProvidersFailed(req.kind, errors)

    async def _open_stream(
        self, req: ChatRequest, span: CallSpan
    ) -> AsyncIterator[StreamDelta | ChatResult]:
        chain = self._chain(req.kind)
        errors: list[tuple[str, BaseException]] = []
        for i, p in enumerate(chain):
            last = i == len(chain) - 1
            br = self.breakers[p.name]
            if not br.allow():
                span.event("breaker_open", {"provider": p.name})
                self._fallback(p, _BreakerOpen(p.name), errors, span, last)
                continue
            state = RetryState(self.retry, not last)
            while True:
                started = False
                it = p.attempt_stream(req, timeout=self._attempt_timeout(req, state))
                try:
                    async for item in it:
                        started = True
                        yield item
                except ProviderError as exc:
                    if started:  # deltas were handed out: no retry, no fallback
                        self.telemetry.failed(p.provider_name, p.model, req.kind, exc)
                        br.failure() if exc.retryable else br.neutral()
                        raise
                    if await self._on_failure(p, br, state, exc, req, span):
                        continue
                    self._fallback(p, exc, errors, span, last)
                    break
                except BaseException:
                    br.neutral()
                    raise
                finally:
                    await it.aclose()  # type: ignore[attr-defined]
                br.success()
                return
        raise AllProvidersFailed(req.kind, errors)
