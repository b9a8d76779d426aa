"""A foreign client joins the mesh with raw pyzmq + msgspec only (no engine imports here).

It follows docs/protocol.md alone: registers a worker serving type "rawecho" and an
orchestrator that calls both an engine node ("echo") and the raw worker.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
import zmq
from mesh_procs import broker, free_port, node, processes

pytestmark = pytest.mark.timeout(60)

SIG = b"AEM\x01"
REGISTER, HEARTBEAT, DELIVER, ACK, NACK, REPLY, CREDIT, DISCONNECT = range(1, 9)
SEND, REPLY_KIND = 1, 2
enc = msgspec.msgpack.Encoder()
dec = msgspec.msgpack.Decoder()


def dealer(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def recv_kind(sock: zmq.Socket[Any], kind: int, timeout: float = 10.0) -> list[bytes]:
    """Next message of ``kind`` (heartbeats and others skipped); returns its bodies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.poll(100):
            frames = sock.recv_multipart()
            assert frames[0][:4] == SIG and len(frames[0]) == 5
            if frames[0][4] == kind:
                return frames[1:]
    raise AssertionError(f"no frame of kind {kind} within {timeout} s")


def register(sock: zmq.Socket[Any], **fields: Any) -> dict[str, Any]:
    sock.send_multipart([SIG + bytes([REGISTER]), enc.encode(fields)])
    welcome: dict[str, Any] = dec.decode(recv_kind(sock, REGISTER)[0])
    return welcome


def test_raw_pyzmq_msgspec_client_joins_serves_and_calls() -> None:
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    ctx: zmq.Context[Any] = zmq.Context()
    with processes() as procs:
        procs.append(broker(port))
        procs.append(node(ep, "engine-node"))
        worker = dealer(ctx, ep)
        client = dealer(ctx, ep)
        try:
            w = register(
                worker,
                name="raw-worker",
                role="worker",
                types=["rawecho"],
                credit=8,
                heartbeat_ms=200,
            )
            assert w["version"] == 1 and len(w["broker"]) > 0 and w["credit"] > 0
            c = register(client, name="raw-client", role="orchestrator", origins=["rawc"])
            assert c["broker"] == w["broker"]

            # 1) call the engine node: Envelope array per docs/protocol.md (trailing defaults)
            ping = {"@type": "Ping", "n": 41}
            env = [
                "v1",
                ["rawc", 1],
                SEND,
                None,
                ["echo", "x"],
                None,
                None,
                0,
                0.0,
                "",
                0,
                "",
                "Ping",
                ping,
            ]
            client.send_multipart([SIG + bytes([DELIVER]), enc.encode(env)])
            reply = dec.decode(recv_kind(client, REPLY)[0])
            assert reply[0] == "v1" and reply[2] == REPLY_KIND and reply[6] == ["rawc", 1]
            assert reply[12] == "Pong" and reply[13]["n"] == 42

            # 2) call the raw worker through the broker: it sees DELIVER and answers REPLY
            env2 = [
                "v1",
                ["rawc", 2],
                SEND,
                None,
                ["rawecho", "*"],
                None,
                None,
                0,
                0.0,
                "",
                0,
                "",
                "Ping",
                {"@type": "Ping", "n": 7},
            ]
            client.send_multipart([SIG + bytes([DELIVER]), enc.encode(env2)])
            delivered = dec.decode(recv_kind(worker, DELIVER)[0])
            assert delivered[1] == ["rawc", 2] and delivered[4] == ["rawecho", "*"]
            answer = [
                "v1",
                ["raww", 1],
                REPLY_KIND,
                delivered[4],
                None,
                None,
                delivered[1],
                0,
                0.0,
                "",
                0,
                "",
                "Pong",
                {"@type": "Pong", "n": delivered[13]["n"] * 2},
            ]
            worker.send_multipart([SIG + bytes([REPLY]), enc.encode(answer)])
            got = dec.decode(recv_kind(client, REPLY)[0])
            assert got[6] == ["rawc", 2] and got[13]["n"] == 14

            # 3) a one-way message (PUBLISH with a recipient) is ACKed once handed to a node
            tell = [
                "v1",
                ["rawc", 3],
                4,
                None,
                ["echo", "x"],
                None,
                None,
                0,
                0.0,
                "",
                0,
                "",
                "Ping",
                ping,
            ]
            client.send_multipart([SIG + bytes([DELIVER]), enc.encode(tell)])
            assert dec.decode(recv_kind(client, ACK)[0]) == [["rawc", 3]]

            # 4) a worker may not submit: the broker NACKs with FORBIDDEN (code 4)
            worker.send_multipart(
                [SIG + bytes([DELIVER]), enc.encode(["v1", ["raww", 2], SEND, None, ["echo", "x"]])]
            )
            nack = dec.decode(recv_kind(worker, NACK)[0])
            assert nack[0][0] == ["raww", 2] and nack[0][1] == 4

            # 5) a frame of an unknown protocol version gets DISCONNECT BAD_VERSION (3)
            client.send_multipart([b"AEM\x09" + bytes([HEARTBEAT])])
            bye = dec.decode(recv_kind(client, DISCONNECT)[0])
            assert bye["code"] == 3 and "version" in bye["reason"]
        finally:
            worker.close()
            client.close()
            ctx.term()
