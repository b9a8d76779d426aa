"""The model of a demo process: an OpenAI-compatible server when configured, else scripted.

With ``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` set, every call goes to that server through
one :class:`~engine.llm.OpenAIProvider` (model from ``--model``, else ``ENGINE_MODEL``,
else ``gpt-4o-mini``). Otherwise two :class:`~engine.llm.ScriptedProvider` s answer with
:func:`engine.demo.brain.answer`: a *primary* that fails some requests with HTTP 503 the
way a busy server does (one request in 20 once, one in 100 on every attempt) and a
*backup*; the :class:`~engine.llm.ModelRouter` retries the first kind and falls back to the
backup for the second. Either way the router sits behind an :class:`~engine.llm.LLMCache`
and calls are made at temperature 0, so a repeated question is answered from the cache.

Retries, fallbacks and skips of a provider whose circuit breaker is open are counted from
the router's own span events (``retry``, ``fallback``, ``breaker_open``) through an
OpenTelemetry SDK span processor, exported as ``engine_demo_llm_retries_total``,
``engine_demo_llm_fallbacks_total`` and ``engine_demo_llm_breaker_skips_total`` beside the
``engine_llm_*`` metrics. Without the OpenTelemetry SDK they are not counted (None).
"""

from __future__ import annotations

import os
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

from engine.demo.brain import Said, answer
from engine.errors import ProviderError

__all__ = [
    "BANNER",
    "CACHE_THRESHOLD",
    "DEFAULT_MODEL",
    "DemoModel",
    "configured",
    "demo_model",
    "model_name",
]

BANNER: Final = "no OPENAI_API_KEY/OPENAI_BASE_URL: the demo runs on the scripted model (offline)"
DEFAULT_MODEL: Final = "gpt-4o-mini"
#: Cosine a semantic cache hit needs. The orchestrator's plan prompt is mostly a fixed
#: list of capabilities, so with the hashing embedder two *different* questions' plan
#: prompts reach 0.996 (measured over the demo's 300 questions); near-duplicates score 1.0.
CACHE_THRESHOLD: Final = 0.999
#: Replies are bounded so a budget's reservation is too.
MAX_TOKENS: Final = 400
#: The scripted models are priced like this list-priced model, so cost is accounted.
SCRIPTED_PRICE: Final = "gpt-4o-mini"


def configured() -> bool:
    """Whether an OpenAI-compatible server is configured (key or base URL set)."""
    return bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"))


def model_name(cli: str | None = None) -> str:
    """``--model``, else ``ENGINE_MODEL``, else :data:`DEFAULT_MODEL`."""
    return cli or os.environ.get("ENGINE_MODEL") or DEFAULT_MODEL


def _reply(said: Said) -> Any:
    from engine.llm import Reply

    if said.tool:
        return Reply.tool(said.tool, **said.args)
    return Reply(said.text)


def _brain(call: Any) -> Any:
    return _reply(answer(call.messages, call.tools))


class _Outages:
    """The primary's failures: by request, so a retry of the same request knows its try."""

    def __init__(self, transient: int = 20, outage: int = 100, bound: int = 4096) -> None:
        self.transient = transient
        self.outage = outage
        self._tries: OrderedDict[int, int] = OrderedDict()
        self._bound = bound

    def __call__(self, call: Any) -> Any:
        last = call.messages[-1] if call.messages else {}
        key = zlib.crc32(f"{len(call.messages)}|{call.kind}|{last.get('content')}".encode())
        n = self._tries.pop(key, 0) + 1
        self._tries[key] = n
        if len(self._tries) > self._bound:
            self._tries.popitem(last=False)
        if key % self.outage == 0 or (key % self.transient == 1 and n == 1):
            raise ProviderError(
                "HTTP 503: the scripted primary is overloaded",
                provider="scripted",
                model="scripted-primary",
                status=503,
                retryable=True,
            )
        return _brain(call)


class _Counts:
    """Router span events, counted into Prometheus counters on ``registry``."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter

        self.retries = Counter(
            "engine_demo_llm_retries", "Retries the model router made", registry=registry
        )
        self.fallbacks = Counter(
            "engine_demo_llm_fallbacks",
            "Calls the model router moved to the next provider",
            registry=registry,
        )
        self.skips = Counter(
            "engine_demo_llm_breaker_skips",
            "Providers the model router skipped because their circuit breaker was open",
            registry=registry,
        )

    def tracer_provider(self) -> Any:
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

        counts = self

        class EventCounter(SpanProcessor):
            def on_end(self, span: Any) -> None:
                for event in span.events:
                    if event.name == "retry":
                        counts.retries.inc()
                    elif event.name == "fallback":
                        counts.fallbacks.inc()
                    elif event.name == "breaker_open":
                        counts.skips.inc()

        provider = TracerProvider()
        provider.add_span_processor(EventCounter())
        return provider


class DemoModel:
    """The router of one process, called at temperature 0 (so the cache applies) with
    replies bounded to :data:`MAX_TOKENS`.

    Offers what the orchestrator and the workers call: ``chat``, ``stream``,
    ``run_tools``; ``describe()`` says which model it is; ``counted`` whether retries and
    fallbacks are being counted.
    """

    def __init__(self, router: Any, description: str, counted: bool) -> None:
        self.router = router
        self.description = description
        self.counted = counted

    def describe(self) -> str:
        return self.description

    @property
    def cache(self) -> Any:
        return self.router.cache

    @staticmethod
    def _pin(kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("temperature", 0.0)
        # Given here, not filled in by the budget's reservation: the cache is looked up
        # before that and filled after it, and max_tokens is part of the cache key.
        kwargs.setdefault("max_tokens", MAX_TOKENS)
        return kwargs

    async def chat(self, messages: Any, **kwargs: Any) -> Any:
        return await self.router.chat(messages, **self._pin(kwargs))

    def stream(self, messages: Any, **kwargs: Any) -> Any:
        return self.router.stream(messages, **self._pin(kwargs))

    async def run_tools(self, messages: Any, **kwargs: Any) -> Any:
        return await self.router.run_tools(messages, **self._pin(kwargs))

    async def aclose(self) -> None:
        await self.router.aclose()


def demo_model(
    model: str | None = None,
    *,
    metrics: Any = None,
    audit: Any = None,
    env: Mapping[str, str] | None = None,
) -> DemoModel:
    """The process's model (see the module docs); ``metrics`` default: the process's."""
    from engine.llm import DEFAULT_PRICES, LLMCache, ModelRouter, RetryPolicy, ScriptedProvider
    from engine.observe.metrics import default_metrics

    m = metrics if metrics is not None else default_metrics()
    counts = _Counts(m.registry)
    try:
        tracer_provider = counts.tracer_provider()
    except ImportError:  # no OpenTelemetry SDK: no span events to count
        tracer_provider = None
    pipeline: dict[str, Any] = {
        "cache": LLMCache(threshold=CACHE_THRESHOLD, max_entries=20_000),
        "metrics": m,
        "audit": audit,
        "default_max_tokens": MAX_TOKENS,
        "tracer_provider": tracer_provider,
        "spans": tracer_provider is not None,
    }
    e = os.environ if env is None else env
    if e.get("OPENAI_API_KEY") or e.get("OPENAI_BASE_URL"):
        from engine.llm import OpenAIProvider

        name = model_name(model)
        server = e.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        provider = OpenAIProvider(name, base_url=e.get("OPENAI_BASE_URL") or None)
        router = ModelRouter({"default": [provider]}, **pipeline)
        return DemoModel(router, f"{name} at {server}", tracer_provider is not None)
    primary = ScriptedProvider(
        default=_Outages(), model="scripted-primary", name="primary", max_calls=256
    )
    backup = ScriptedProvider(default=_brain, model="scripted-backup", name="backup", max_calls=256)
    router = ModelRouter(
        {"default": [primary, backup]},
        retry=RetryPolicy(attempts=3, base=0.01, cap=0.05),
        prices={m: DEFAULT_PRICES[SCRIPTED_PRICE] for m in ("scripted-primary", "scripted-backup")},
        **pipeline,
    )
    described = f"scripted primary + backup (offline, priced as {SCRIPTED_PRICE})"
    return DemoModel(router, described, tracer_provider is not None)
