"""An application with its own OpenTelemetry SDK provider sees the engine's spans inside its
own traces: handler and tool spans of the in-process runtime parented under the
application's span (also for queued, published and nested deliveries), the provider passed
in or set globally, and the mesh continuing the application's trace on a node."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider

import engine
from engine import Agent, AgentId, Message, Runtime, handler
from engine.observe import Tracer
from tests.agents_for_tests import Echo, Ping, Pong, uv

ROOT = Path(__file__).resolve().parent.parent


class Ask(Message, tag="otel.Ask"):
    n: int


class Relay(Agent):
    """Asks the Echo agent for ``n + 1`` (a nested send inside a handler)."""

    @handler
    async def on_ask(self, msg: Ask, ctx: engine.Context) -> Pong:
        reply: Pong = await ctx.send(Ping(msg.n), to=AgentId("echo", "e"))
        return reply


class Gated(Agent):
    """Holds its first message until ``release`` is set, so the next one queues."""

    release: asyncio.Event

    @handler
    async def on_ping(self, msg: Ping, ctx: engine.Context) -> Pong:
        if msg.n == 1:
            await Gated.release.wait()
        return Pong(msg.n + 1)


@pytest.fixture
def app() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """The application's own provider, exporting to memory (never set globally here)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    spans: dict[str, list[ReadableSpan]] = {}
    for s in exporter.get_finished_spans():
        spans.setdefault(s.name, []).append(s)
    return spans


def _parent(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


@uv
async def test_handler_spans_nest_under_the_applications_span(
    app: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = app
    tracer = provider.get_tracer("my-app")
    async with Runtime(tracer_provider=provider) as rt:
        rt.register("echo", Echo)
        rt.register("relay", Relay)
        with tracer.start_as_current_span("request") as request:
            assert await rt.send(Ask(1), to=AgentId("relay", "r")) == Pong(2)
    spans = _by_name(exporter)
    (relay,) = spans["relay.on_ask"]
    (echo,) = spans["echo.on_ping"]
    assert _parent(relay) == request.get_span_context().span_id
    assert _parent(echo) == relay.context.span_id  # the nested send continues the trace
    trace_id = request.get_span_context().trace_id
    assert {relay.context.trace_id, echo.context.trace_id} == {trace_id}
    assert relay.attributes is not None and relay.attributes["engine.agent.type"] == "relay"
    assert relay.attributes["engine.message.type"] == "Ask"


@uv
async def test_queued_and_published_deliveries_keep_their_senders_span(
    app: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """A busy agent's mailbox and a publish run handlers later, in another task."""
    provider, exporter = app
    tracer = provider.get_tracer("my-app")
    Gated.release = asyncio.Event()
    async with Runtime(tracer_provider=provider) as rt:
        rt.register("echo", Gated)
        rt.subscribe("echo", topic="pings.*")
        to = AgentId("echo", "busy")
        with tracer.start_as_current_span("first") as first:
            one = asyncio.ensure_future(rt.send(Ping(1), to=to))
            await asyncio.sleep(0)  # runs inline, waits on the gate: the agent is busy
        with tracer.start_as_current_span("second") as second:
            two = asyncio.ensure_future(rt.send(Ping(2), to=to))
            await asyncio.sleep(0)  # queued in the mailbox
        assert not one.done() and not two.done()
        Gated.release.set()
        assert await asyncio.gather(one, two) == [Pong(2), Pong(3)]
        with tracer.start_as_current_span("third") as third:
            assert await rt.publish(Ping(3), topic="pings.eu") == 1
        await rt.idle()
    spans = _by_name(exporter)["echo.on_ping"]
    assert len(spans) == 3
    parents = {_parent(s) for s in spans}
    assert parents == {x.get_span_context().span_id for x in (first, second, third)}


@uv
async def test_tool_calls_get_spans(app: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = app

    @engine.tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    async with Runtime(tracer_provider=provider) as rt:
        rt.tools.add(add)
        with provider.get_tracer("my-app").start_as_current_span("agent step") as step:
            assert await rt.tools.call("add", {"a": 1, "b": 2}) == 3
    (span,) = _by_name(exporter)["execute_tool add"]
    assert _parent(span) == step.get_span_context().span_id
    assert span.attributes is not None and span.attributes["gen_ai.tool.name"] == "add"


@uv
async def test_tracing_off_keeps_the_direct_call_path() -> None:
    for rt in (Runtime(), Runtime(tracer_provider=NoOpTracerProvider())):
        assert rt.tracer is None and rt.middleware == ()
        async with rt:
            rt.register("echo", Echo)
            assert await rt.send(Ping(1), to=AgentId("echo", "a")) == Pong(2)


def test_global_provider_is_used_when_none_is_passed(tmp_path: Path) -> None:
    """In its own interpreter: setting the global provider is once per process."""
    script = textwrap.dedent(
        """
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        import engine
        from engine import AgentId, Runtime
        from tests.agents_for_tests import Echo, Ping

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)

        async def main():
            async with Runtime() as rt:
                rt.register("echo", Echo)
                with trace.get_tracer("app").start_as_current_span("request"):
                    await rt.send(Ping(1), to=AgentId("echo", "a"))

        engine.run(main())
        print(json.dumps([[s.name, s.context.span_id, s.parent and s.parent.span_id]
                          for s in exporter.get_finished_spans()]))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    spans = {name: (sid, parent) for name, sid, parent in json.loads(res.stdout)}
    assert spans["echo.on_ping"][1] == spans["request"][0]


def test_mesh_node_continues_the_applications_trace(
    app: tuple[TracerProvider, InMemorySpanExporter], broker: object
) -> None:
    """A send through the mesh from inside the application's span: the node's handler span
    (on the same provider, as one service would have) is a child in the same trace."""
    from mesh_agents import Echo as MeshEcho
    from mesh_agents import Ping as MeshPing

    from engine.mesh import Node

    provider, exporter = app
    endpoint = broker.endpoints[0]  # type: ignore[attr-defined]

    async def main() -> int:
        node_tracer = Tracer("node", tracer_provider=provider)
        async with (
            Node(endpoint, {"echo": MeshEcho}, name="otel-n", tracer=node_tracer),
            Runtime(mesh=endpoint, tracer_provider=provider) as rt,
        ):
            with provider.get_tracer("my-app").start_as_current_span("request") as request:
                reply = await rt.send(MeshPing(1), to=AgentId("echo", "x"), timeout=10)
            assert reply.n == 2
            return request.get_span_context().span_id

    request_id = engine.run(asyncio.wait_for(main(), 30))
    (handled,) = _by_name(exporter)["handle Ping"]
    assert _parent(handled) == request_id
