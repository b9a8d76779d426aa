"""Spans around in-process handler and tool calls, as one middleware.

``Runtime(tracer_provider=...)`` (or an application that has set a global OpenTelemetry
tracer provider) installs it first in the chain: each delivery gets a ``handler`` span,
parented on the delivery's ``traceparent`` (a sender's span, an envelope from the mesh) or
else on the span current where the handler runs; each tool call a ``tool`` span. The
handler's ``ctx.traceparent`` becomes its span's, so what it sends continues the trace.
With tracing off nothing is installed and the runtime keeps its direct call path.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from engine.observe.tracing import Tracer

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from engine.runtime._hooks import Middleware, Next

__all__ = ["runtime_tracer", "tracing_middleware"]


def runtime_tracer(tracer_provider: TracerProvider | None) -> Tracer | None:
    """The tracer a runtime uses: on ``tracer_provider``, else on the application's global
    provider when one is set; None (tracing off) when neither records spans."""
    if tracer_provider is None:
        otel = sys.modules.get("opentelemetry.trace")  # an application that traces has it
        if otel is None:
            return None
        tracer_provider = otel.get_tracer_provider()
        if isinstance(tracer_provider, otel.ProxyTracerProvider):
            return None  # the application has set no provider
    otel = sys.modules.get("opentelemetry.trace")
    if otel is not None and isinstance(tracer_provider, otel.NoOpTracerProvider):
        return None
    return Tracer(tracer_provider=tracer_provider)


def tracing_middleware(tracer: Tracer) -> Middleware:
    """A middleware opening a span around each handler or tool call."""

    async def trace(ctx: Any, value: Any, call_next: Next) -> Any:
        if ctx.kind == "tool":
            tool = ctx.tool
            attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool.name}
            attrs["gen_ai.tool.call.id"] = ctx.call_id
            with tracer.span(f"execute_tool {tool.name}", kind="tool", attributes=attrs):
                return await call_next(ctx, value)
        agent = ctx.agent.id
        attrs = {
            "engine.agent.type": agent.type,
            "engine.agent.key": agent.key,
            "engine.handler": ctx.route.name,
            "engine.message.type": type(value).__name__,
        }
        name = f"{agent.type}.{ctx.route.name}"
        with tracer.span(name, ctx.traceparent or None, kind="handler", attributes=attrs) as span:
            ctx.traceparent = span.traceparent
            return await call_next(ctx, value)

    return trace
