"""Acceptance: one orchestrated job across the real mesh (broker + two nodes) is one trace.

A client opens the job span and sends to a ``planner`` on node a through the broker; the
planner's handler continues the trace from the delivered envelope's ``traceparent``, opens a
subtask span and sends to a ``worker`` on node b through the broker; the worker's handler
continues it again. Each side has its own :class:`Tracer` (own provider, in-memory
exporter). The broker forwards ``traceparent`` untouched (it opens no spans of its own yet:
docs/observability.md, "wiring").
"""

from __future__ import annotations

import asyncio
import time

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine.mesh import Broker, MeshClient, MeshContext, Node, decode_reply
from engine.messages import AgentId, Envelope, Kind, Message, encode_payload
from engine.observe import Tracer, parse_traceparent

EXPORTER = InMemorySpanExporter()
TRACERS = {name: Tracer(name, exporters=[EXPORTER]) for name in ("client", "node-a", "node-b")}
OUTBOX: dict[str, MeshClient] = {}
HB = 2.0  # seconds; generous so a loaded machine does not declare a node dead mid-test


class ObsJob(Message):
    n: int


class ObsSub(Message):
    n: int


class ObsDone(Message):
    n: int


async def traced_send(
    peer: MeshClient, tracer: Tracer, message: Message, to: AgentId, parent: str, name: str,
    kind: str,
) -> Message:
    with tracer.span(name, parent or None, kind=kind) as span:
        env = Envelope(
            peer.ids.next(), Kind.SEND, recipient=to, deadline=time.time() + 10,
            traceparent=span.traceparent, payload_type=type(message).__name__,
            payload=encode_payload(message),
        )
        reply = await peer.request(env, timeout=20)
        done: Message = decode_reply(reply, ObsDone)  # a RemoteError says what failed remotely
        assert parse_traceparent(reply.traceparent).trace_id == span.trace_id
        return done


class Planner:
    async def on_job(self, msg: ObsJob, ctx: MeshContext) -> ObsDone:
        tracer = TRACERS["node-a"]
        with tracer.span("plan", ctx.envelope.traceparent, kind="handler") as span:
            done = await traced_send(OUTBOX["a"], tracer, ObsSub(msg.n + 1),
                                     AgentId("worker", "*"), span.traceparent, "subtask", "subtask")
            return ObsDone(done.n * 10)


class Worker:
    async def on_sub(self, msg: ObsSub, ctx: MeshContext) -> ObsDone:
        with TRACERS["node-b"].span("work", ctx.envelope.traceparent, kind="handler"):
            return ObsDone(msg.n * 2)


def test_job_across_broker_and_two_nodes_is_one_connected_trace() -> None:
    EXPORTER.clear()
    broker = Broker("tcp://127.0.0.1:0", heartbeat=HB)
    broker.start()
    ep = broker.endpoints[0]

    async def main() -> ObsDone:
        async with Node(ep, {"planner": Planner}, name="a", heartbeat=HB), \
                Node(ep, {"worker": Worker}, name="b", heartbeat=HB), \
                MeshClient(ep, heartbeat=HB) as client, \
                MeshClient(ep, heartbeat=HB, name="a-out") as outbox:
            OUTBOX["a"] = outbox
            return await traced_send(client, TRACERS["client"], ObsJob(1), AgentId("planner", "*"),
                                     "", "job", "task")

    try:
        assert asyncio.run(asyncio.wait_for(main(), 60)) == ObsDone(40)  # (1 + 1) * 2 * 10
    finally:
        broker.stop()
    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    assert set(spans) == {"job", "plan", "subtask", "work"}
    assert len({s.context.trace_id for s in spans.values()}) == 1
    assert {s.resource.attributes["service.name"] for s in spans.values()} == {
        "client", "node-a", "node-b",
    }
    assert spans["job"].parent is None
    for child, parent in (("plan", "job"), ("subtask", "plan"), ("work", "subtask")):
        assert spans[child].parent is not None
        assert spans[child].parent.span_id == spans[parent].context.span_id, child
    assert spans["plan"].parent.is_remote and spans["work"].parent.is_remote  # crossed the wire
