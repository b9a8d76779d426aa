"""The base of every model provider: one model, its limits, one attempt per call.

A provider implements ``_complete`` (one request, one reply) and ``_stream_raw`` (one
streamed request); this base adds the per-provider concurrency and rate limits and the
per-call timeout, and maps a timeout to a retryable :class:`~engine.errors.ProviderError`.
A provider used on its own makes exactly one attempt per call; retries, fallback and
circuit breaking belong to :class:`~engine.llm.ModelRouter`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from engine.errors import ProviderError
from engine.llm.base import ChatResult, StreamDelta
from engine.llm.limits import Limits
from engine.llm.pipeline import BaseLLM
from engine.llm.prices import Price
from engine.llm.request import ChatRequest, estimate_tokens
from engine.llm.telemetry import CallSpan

__all__ = ["Provider"]


class Provider(BaseLLM):
    """One model on one backend. ``name`` labels it in metrics, breakers and errors.

    ``timeout`` bounds each attempt (seconds, overridden per call by ``timeout=``);
    ``max_concurrency``, ``rpm`` and ``tpm`` (or a ready :class:`Limits`) bound its load.
    ``supports_json_schema=False`` sends structured-output requests as JSON in text.
    Other keywords configure the pipeline (see :class:`~engine.llm.pipeline.BaseLLM`).
    """

    provider_name = "provider"
    #: False for providers that never wait on I/O (no timeout to arm per call).
    uses_io = True

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        timeout: float = 60.0,
        max_concurrency: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        limits: Limits | None = None,
        supports_json_schema: bool = True,
        **pipeline: Any,
    ) -> None:
        super().__init__(**pipeline)
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty str, got {model!r}")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        self.model = model
        self.name = name or f"{self.provider_name}/{model}"
        self.timeout = float(timeout)
        self.limits = (
            limits if limits is not None else Limits(concurrency=max_concurrency, rpm=rpm, tpm=tpm)
        )
        self.supports_json_schema = supports_json_schema

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # -- what concrete providers implement -------------------------------------------------
    async def _complete(self, req: ChatRequest) -> ChatResult:
        raise NotImplementedError

    def _stream_raw(self, req: ChatRequest) -> AsyncIterator[StreamDelta | ChatResult]:
        raise NotImplementedError

    # -- BaseLLM hooks ---------------------------------------------------------------------
    def _scope(self, kind: str) -> str:
        return self.name

    def _price_bound(self, kind: str) -> Price | None:
        return self.prices.get(self.model)

    def _label(self, kind: str) -> tuple[str, str]:
        return self.provider_name, self.model

    async def _send(self, req: ChatRequest, span: CallSpan) -> ChatResult:
        try:
            if not self.uses_io and self.limits.unlimited:
                return await self._complete(req)  # attempt() without its coroutine frame
            return await self.attempt(req)
        except ProviderError as exc:
            self.telemetry.failed(self.provider_name, self.model, req.kind, exc)
            raise

    def _open_stream(
        self, req: ChatRequest, span: CallSpan
    ) -> AsyncIterator[StreamDelta | ChatResult]:
        return self.attempt_stream(req)

    # -- one attempt -----------------------------------------------------------------------
    def _timeout_error(self, seconds: float) -> ProviderError:
        return ProviderError(
            f"no reply within {seconds:g}s",
            provider=self.provider_name,
            model=self.model,
            retryable=True,
            timeout=True,
        )

    async def attempt(self, req: ChatRequest, *, timeout: float | None = None) -> ChatResult:
        """One request within the limits and the timeout (what the router calls)."""
        seconds = timeout or req.timeout or self.timeout
        lim = self.limits
        if lim.unlimited:
            if not self.uses_io:
                return await self._complete(req)
            try:
                async with asyncio.timeout(seconds):
                    return await self._complete(req)
            except TimeoutError:
                raise self._timeout_error(seconds) from None
        est = estimate_tokens(req) + (req.max_tokens or 0)
        async with lim.slot(est):
            try:
                async with asyncio.timeout(seconds):
                    result = await self._complete(req)
            except TimeoutError:
                raise self._timeout_error(seconds) from None
        lim.settle(est, result.usage.total_tokens)
        return result

    async def attempt_stream(
        self, req: ChatRequest, *, timeout: float | None = None
    ) -> AsyncIterator[StreamDelta | ChatResult]:
        """One streamed request; ``timeout`` bounds the wait for each piece."""
        seconds = timeout or req.timeout or self.timeout
        est = estimate_tokens(req) + (req.max_tokens or 0)
        final: ChatResult | None = None
        async with self.limits.slot(est):
            it = self._stream_raw(req)
            try:
                while True:
                    try:
                        async with asyncio.timeout(seconds):
                            item = await anext(it)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise self._timeout_error(seconds) from None
                    if isinstance(item, ChatResult):
                        final = item
                    yield item
            finally:
                await it.aclose()  # type: ignore[attr-defined]
        if final is not None:
            self.limits.settle(est, final.usage.total_tokens)
