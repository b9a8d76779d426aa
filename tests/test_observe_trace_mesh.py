"""Acceptance: one orchestrated job across the real mesh (broker + two nodes) is one trace.

A client opens the job span and sends to a ``planner`` on node a through the broker; the
planner's handler continues the trace from the delivered envelope's ``traceparent``, opens a
subtask span and sends to a ``worker`` on node b through the broker; the worker's handler
continues it again. Each side has its own :class:`Tracer` (own provider, in-memory
exporter). Without a tracer the broker forwards ``traceparent`` untouched.

The second test does the same with the engine's own wiring and no tracing code in the
handlers: ``Broker(tracer=...)`` opens a ``hop`` span per forwarded envelope,
``Node(tracer=...)`` a ``handler`` span per delivery, and ``MeshPeer.send`` stamps the
innermost open span's traceparent.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine import Agent, Context, handler
from engine.mesh import Broker, MeshClient, Node, decode_reply
from engine.messages import AgentId, Envelope, Kind, Message, encode_payload
from engine.observe import Tracer, current_traceparent, parse_traceparent

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
    peer: MeshClient,
    tracer: Tracer,
    message: Message,
    to: AgentId,
    parent: str,
    name: str,
    kind: str,
) -> Message:
    with tracer.span(name, parent or None, kind=kind) as span:
        env = Envelope(
            peer.ids.next(),
            Kind.SEND,
            recipient=to,
            deadline=time.time() + 10,
            traceparent=span.traceparent,
            payload_type=type(message).__name__,
            payload=encode_payload(message),
        )
        reply = await peer.request(env, timeout=20)
        done: Message = decode_reply(reply, ObsDone)  # a RemoteError says what failed remotely
        assert parse_traceparent(reply.traceparent).trace_id == span.trace_id
        return done


class Planner(Agent):
    @handler
    async def on_job(self, msg: ObsJob, ctx: Context) -> ObsDone:
        tracer = TRACERS["node-a"]
        with tracer.span("plan", ctx.traceparent, kind="handler") as span:
            done = await traced_send(
                OUTBOX["a"],
                tracer,
                ObsSub(msg.n + 1),
                AgentId("worker", "*"),
                span.traceparent,
                "subtask",
                "subtask",
            )
            return ObsDone(done.n * 10)


class Worker(Agent):
    @handler
    async def on_sub(self, msg: ObsSub, ctx: Context) -> ObsDone:
        with TRACERS["node-b"].span("work", ctx.traceparent, kind="handler"):
            return ObsDone(msg.n * 2)


def test_job_across_broker_and_two_nodes_is_one_connected_trace() -> None:
    EXPORTER.clear()
    broker = Broker("tcp://127.0.0.1:0", heartbeat=HB)
    broker.start()
    ep = broker.endpoints[0]

    async def main() -> ObsDone:
        async with (
            Node(ep, {"planner": Planner}, name="a", heartbeat=HB),
            Node(ep, {"worker": Worker}, name="b", heartbeat=HB),
            MeshClient(ep, heartbeat=HB) as client,
            MeshClient(ep, heartbeat=HB, name="a-out") as outbox,
        ):
            OUTBOX["a"] = outbox
            return await traced_send(
                client, TRACERS["client"], ObsJob(1), AgentId("planner", "*"), "", "job", "task"
            )

    try:
        assert asyncio.run(asyncio.wait_for(main(), 60)) == ObsDone(40)  # (1 + 1) * 2 * 10
    finally:
        broker.stop()
    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    assert set(spans) == {"job", "plan", "subtask", "work"}
    assert len({s.context.trace_id for s in spans.values()}) == 1
    assert {s.resource.attributes["service.name"] for s in spans.values()} == {
        "client",
        "node-a",
        "node-b",
    }
    assert spans["job"].parent is None
    for child, parent in (("plan", "job"), ("subtask", "plan"), ("work", "subtask")):
        assert spans[child].parent is not None
        assert spans[child].parent.span_id == spans[parent].context.span_id, child
    assert spans["plan"].parent.is_remote and spans["work"].parent.is_remote  # crossed the wire


# -- the engine's own spans: Broker(tracer=), Node(tracer=), MeshPeer.send -------------------

WIRED = InMemorySpanExporter()
WIRED_TRACERS = {
    name: Tracer(name, exporters=[WIRED]) for name in ("client", "broker", "node-a", "node-b")
}
WIRED_OUT: dict[str, MeshClient] = {}
SEEN: dict[str, list[str]] = {"planner": [], "worker": []}


class TrJob(Message):
    n: int


class TrSub(Message):
    n: int


class TrDone(Message):
    n: int


class WiredPlanner(Agent):  # sends through another peer, with the ambient handler span
    @handler
    async def on_job(self, msg: TrJob, ctx: Context) -> TrDone:
        SEEN["planner"].append(current_traceparent())
        assert ctx.traceparent == current_traceparent()
        done: TrDone = await WIRED_OUT["a"].send(
            TrSub(msg.n + 1), to=AgentId("worker", "*"), timeout=20
        )
        return TrDone(done.n * 10)


class WiredWorker(Agent):  # ctx.traceparent is the span's
    @handler
    async def on_sub(self, msg: TrSub, ctx: Context) -> TrDone:
        SEEN["worker"].append(ctx.traceparent)
        return TrDone(msg.n * 2)


def test_engine_spans_broker_hops_and_node_handlers_form_one_trace() -> None:
    WIRED.clear()
    for seen in SEEN.values():
        seen.clear()
    broker = Broker("tcp://127.0.0.1:0", heartbeat=HB, tracer=WIRED_TRACERS["broker"])
    broker.start()
    ep = broker.endpoints[0]
    t = WIRED_TRACERS

    async def main() -> TrDone:
        async with (
            Node(ep, {"planner": WiredPlanner}, name="a", heartbeat=HB, tracer=t["node-a"]),
            Node(ep, {"worker": WiredWorker}, name="b", heartbeat=HB, tracer=t["node-b"]),
            MeshClient(ep, heartbeat=HB) as client,
            MeshClient(ep, heartbeat=HB, name="wired-a-out") as outbox,
        ):
            WIRED_OUT["a"] = outbox
            with t["client"].span("job", kind="task"):
                done: TrDone = await client.send(TrJob(1), to=AgentId("planner", "*"), timeout=20)
            assert current_traceparent() == ""  # the span is closed again
            untraced: TrDone = await client.send(TrSub(5), to=AgentId("worker", "x"), timeout=20)
            assert untraced == TrDone(10)
            return done

    try:
        assert asyncio.run(asyncio.wait_for(main(), 60)) == TrDone(40)
    finally:
        broker.stop()
    spans = [s for s in WIRED.get_finished_spans()]
    job = [s for s in spans if s.name == "job"]
    assert len(job) == 1
    trace = [s for s in spans if s.context.trace_id == job[0].context.trace_id]
    by_name = {s.name: s for s in trace}
    assert set(by_name) == {"job", "hop planner/*", "handle TrJob", "hop worker/*", "handle TrSub"}
    assert by_name["hop planner/*"].resource.attributes["service.name"] == "broker"
    assert by_name["handle TrSub"].resource.attributes["service.name"] == "node-b"
    chain = ("job", "hop planner/*", "handle TrJob", "hop worker/*", "handle TrSub")
    for parent, child in itertools.pairwise(chain):
        assert by_name[child].parent is not None, child
        assert by_name[child].parent.span_id == by_name[parent].context.span_id, child
    assert by_name["hop planner/*"].attributes["engine.source"].startswith("peer-")
    assert by_name["handle TrJob"].attributes["engine.node"] == "a"
    # the handlers ran inside their spans: what they saw (and sent with) is the span's
    for who, name in (("planner", "handle TrJob"), ("worker", "handle TrSub")):
        assert parse_traceparent(SEEN[who][0]).span_id == f"{by_name[name].context.span_id:016x}"
    # a send outside any span starts a new trace at the broker's hop
    (hop,) = [s for s in spans if s.name == "hop worker/x"]
    assert hop.parent is None and hop.context.trace_id != job[0].context.trace_id
    assert parse_traceparent(SEEN["worker"][1]).trace_id == f"{hop.context.trace_id:032x}"
