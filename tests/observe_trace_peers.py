"""Processes for the cross-process tracing test: a forwarding broker and two agent nodes.

Run as ``python tests/observe_trace_peers.py ROLE PORT SPANS_FILE``. Every process owns a
:class:`engine.observe.Tracer` with an in-memory exporter; envelopes travel as msgspec
frames over real ZeroMQ sockets (ROUTER broker, DEALER peers) and carry W3C
``traceparent``. A ``Kind.CANCEL`` envelope tells a process to write its finished spans
(JSON) to SPANS_FILE and exit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import zmq
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine.messages import (
    AgentId,
    Envelope,
    Kind,
    Message,
    MessageIds,
    decode,
    decode_payload,
    encode,
    encode_payload,
)
from engine.observe import Tracer


class ObsWork(Message):
    n: int


# An envelope's default payload (empty Raw) does not decode: control envelopes carry this.
NOTHING = encode_payload(None)


def dump(exporter: InMemorySpanExporter, path: str) -> None:
    spans = [
        {
            "name": s.name,
            "trace_id": f"{s.context.trace_id:032x}",
            "span_id": f"{s.context.span_id:016x}",
            "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
            "service": s.resource.attributes["service.name"],
            "kind": s.attributes.get("engine.span_kind"),
        }
        for s in exporter.get_finished_spans()
    ]
    Path(path).write_bytes(orjson.dumps(spans))


def broker(port: int, spans: str) -> None:
    exporter = InMemorySpanExporter()
    tracer = Tracer("broker", exporters=[exporter])
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(f"tcp://127.0.0.1:{port}")
    print("ready", flush=True)
    while True:
        sender, frame = sock.recv_multipart()
        env = decode(frame)
        if env.kind == Kind.PUBLISH:  # hello: acknowledge, the peer is now routable
            sock.send_multipart([sender, frame])
            continue
        if env.kind == Kind.CANCEL and env.recipient is None:
            dump(exporter, spans)
            return
        assert env.recipient is not None
        if env.kind == Kind.CANCEL:  # control: forwarded untraced
            sock.send_multipart([env.recipient.type.encode(), frame])
            continue
        # one "hop" span per forwarded envelope; the next process parents on it
        with tracer.span(f"hop {env.recipient.type}", env.traceparent, kind="hop") as hop:
            env.traceparent = hop.traceparent
            sock.send_multipart([env.recipient.type.encode(), encode(env)])


def node(name: str, port: int, spans: str) -> None:
    exporter = InMemorySpanExporter()
    tracer = Tracer(f"node-{name}", exporters=[exporter])
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, name.encode())
    sock.connect(f"tcp://127.0.0.1:{port}")
    ids = MessageIds(name)
    me = AgentId(name)
    # hello: the broker learns our identity and acknowledges
    sock.send(encode(Envelope(ids.next(), Kind.PUBLISH, sender=me, payload=NOTHING)))
    assert decode(sock.recv()).kind == Kind.PUBLISH  # acknowledged
    print("ready", flush=True)
    while True:
        env = decode(sock.recv())
        if env.kind == Kind.CANCEL:
            if env.recipient is not None and env.recipient.type == name:
                dump(exporter, spans)
                return
            continue
        if env.kind != Kind.SEND:
            continue
        work = decode_payload(env.payload, ObsWork)
        with tracer.span(f"handle on {name}", env.traceparent, kind="handler") as h:
            if name == "a":  # node a fans a subtask out to node b and waits for its reply
                with tracer.span("subtask for b", h.traceparent, kind="subtask") as sub:
                    sock.send(
                        encode(
                            Envelope(
                                ids.next(),
                                Kind.SEND,
                                sender=me,
                                recipient=AgentId("b"),
                                traceparent=sub.traceparent,
                                payload_type="ObsWork",
                                payload=encode_payload(ObsWork(work.n + 1)),
                            )
                        )
                    )
                    reply = decode(sock.recv())
                    assert reply.kind == Kind.REPLY
                    work = decode_payload(reply.payload, ObsWork)
            assert env.sender is not None
            sock.send(
                encode(
                    Envelope(
                        ids.next(),
                        Kind.REPLY,
                        sender=me,
                        recipient=env.sender,
                        correlation=env.id,
                        traceparent=h.traceparent,
                        payload_type="ObsWork",
                        payload=encode_payload(ObsWork(work.n * 10)),
                    )
                )
            )


if __name__ == "__main__":
    role, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if role == "broker":
        broker(port, path)
    else:
        node(role, port, path)
