"""Acceptance (pre-mesh): one traced job across a broker process and two node processes.

Real processes, real ZeroMQ sockets on 127.0.0.1, msgspec envelopes carrying W3C
``traceparent``; each process exports its spans with an in-memory exporter. The spans of
all four processes must form one trace whose parent links connect every span to the job's
root: task -> hop -> handler(a) -> subtask -> hop -> handler(b), and the replies' hops.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import zmq
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine.messages import (
    AgentId,
    Envelope,
    Kind,
    MessageIds,
    decode,
    decode_payload,
    encode,
    encode_payload,
)
from engine.observe import Tracer

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from observe_trace_peers import NOTHING, ObsWork  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(role: str, port: int, spans: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "observe_trace_peers.py"), role, str(port), str(spans)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == b"ready\n", (line, proc.stderr.read() if proc.stderr else b"")
    return proc


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[int, dict[str, Path], list[subprocess.Popen[bytes]]]]:
    port = free_port()
    files = {r: tmp_path / f"{r}.json" for r in ("broker", "a", "b")}
    procs = [start("broker", port, files["broker"])]
    procs += [start(r, port, files[r]) for r in ("a", "b")]
    yield port, files, procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()


def test_one_job_is_one_connected_trace(
    mesh: tuple[int, dict[str, Path], list[subprocess.Popen[bytes]]],
) -> None:
    port, files, procs = mesh
    exporter = InMemorySpanExporter()
    tracer = Tracer("client", exporters=[exporter])
    ids = MessageIds("client")
    me = AgentId("client")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"client")
    sock.setsockopt(zmq.RCVTIMEO, 20_000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        hello = Envelope(ids.next(), Kind.PUBLISH, sender=me, payload=NOTHING)
        sock.send(encode(hello))
        assert decode(sock.recv()).kind == Kind.PUBLISH
        with tracer.span("job", kind="task") as job:
            sock.send(
                encode(
                    Envelope(
                        ids.next(),
                        Kind.SEND,
                        sender=me,
                        recipient=AgentId("a"),
                        traceparent=job.traceparent,
                        payload_type="ObsWork",
                        payload=encode_payload(ObsWork(1)),
                    )
                )
            )
            reply = decode(sock.recv())
        assert decode_payload(reply.payload, ObsWork) == ObsWork(200)  # b: (1 + 1) * 10, a: * 10
        for target in ("a", "b"):
            stop = Envelope(ids.next(), Kind.CANCEL, recipient=AgentId(target), payload=NOTHING)
            sock.send(encode(stop))
        sock.send(encode(Envelope(ids.next(), Kind.CANCEL, payload=NOTHING)))  # to the broker
        for p in procs:
            assert p.wait(20) == 0, p.stderr.read() if p.stderr else b""
    finally:
        sock.close()

    spans: list[dict[str, str | None]] = []
    for f in files.values():
        spans += orjson.loads(f.read_bytes())
    root = exporter.get_finished_spans()[0]
    spans.append(
        {
            "name": root.name,
            "trace_id": f"{root.context.trace_id:032x}",
            "span_id": f"{root.context.span_id:016x}",
            "parent_id": None,
            "service": "client",
            "kind": "task",
        }
    )
    by_id = {s["span_id"]: s for s in spans}

    assert {s["trace_id"] for s in spans} == {f"{root.context.trace_id:032x}"}
    assert len(by_id) == len(spans) == 8  # job, 4 hops, 2 handlers, 1 subtask
    assert {s["service"] for s in spans} == {"client", "broker", "node-a", "node-b"}
    for s in spans:  # every span but the root has its parent among the trace's spans
        if s["name"] != "job":
            assert s["parent_id"] in by_id, s

    def chain(name: str) -> list[str]:
        span = next(s for s in spans if s["name"] == name)
        out = [span["name"]]
        while span["parent_id"]:
            span = by_id[span["parent_id"]]
            out.append(span["name"])
        return out[::-1]

    assert chain("handle on b") == [
        "job",
        "hop a",
        "handle on a",
        "subtask for b",
        "hop b",
        "handle on b",
    ]
    assert chain("hop client") == ["job", "hop a", "handle on a", "hop client"]
