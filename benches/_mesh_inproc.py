"""In-process parts of benches/mesh_seq_profile.py: the mesh's Python cost without sockets.

``micro()``: FrameSocket (compiled) against its pyzmq twin on a real TCP ROUTER/DEALER pair
(2-frame send, 3-frame receive, ``readable``). ``python_costs()``: the broker's, a node's and
the client's own Python work per sequential round trip, with the socket replaced by a fake
that hands messages over directly (so no ZeroMQ, kernel or wake-up cost is counted).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import zmq
from mesh_bench_agents import Bench, Ping

from engine.mesh import BrokerConfig, BrokerCore, MeshClient, Node
from engine.mesh import protocol as P
from engine.mesh._frames_py import FrameSocketPy
from engine.mesh._io import FrameSocketC
from engine.messages import AgentId, Codec, Envelope, Kind, MessageIds, encode_payload, wire_name

BLOB = b"x" * 64
DELIVER = P.header(P.FrameKind.DELIVER)
REPLY = P.header(P.FrameKind.REPLY)


def micro(rounds: int = 100, batch: int = 200) -> list[str]:
    """us per 2-frame send / 3-frame receive (batched) / readable(), both implementations."""
    ctx: zmq.Context[Any] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    time.sleep(0.2)
    frames = [P.header(P.FrameKind.REPLY), b"x" * 150]
    out = []
    impls: list[Any] = [FrameSocketPy] + ([FrameSocketC] if FrameSocketC is not None else [])
    for impl in impls:
        r, d = impl(router), impl(dealer)
        t_send = t_recv = 0.0
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(batch):
                d.send(frames)
            t_send += time.perf_counter() - t
            r.wait(1000)
            time.sleep(0.003)  # all of them arrived
            t = time.perf_counter()
            n = 0
            while n < batch:
                n += len(r.recv_many(4096))
            t_recv += time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(rounds * batch):
            d.readable()
        t_ready = time.perf_counter() - t
        k = rounds * batch / 1e6
        out.append(
            f"{impl.__name__:14s} send {t_send / k:5.2f} us  recv {t_recv / k:5.2f} us  "
            f"readable {t_ready / k:5.2f} us"
        )
    router.close(0)
    dealer.close(0)
    ctx.term()
    return out


class _FakeIO:
    """Stands in for FrameSocket: an inbox to drain, sends recorded or answered."""

    def __init__(self) -> None:
        self.inbox: list[list[bytes]] = []
        self.sent: list[tuple[bytes | None, list[bytes]]] = []

    def recv(self) -> list[bytes] | None:
        return self.inbox.pop(0) if self.inbox else None

    def recv_many(self, limit: int) -> list[list[bytes]]:
        msgs, self.inbox = self.inbox, []
        return msgs

    def recv_many_meta(self, limit: int, prop: str) -> list[tuple[list[bytes], str | None]]:
        return [(m, None) for m in self.recv_many(limit)]

    def send(self, frames: list[bytes], ident: bytes | None = None) -> bool:
        self.sent.append((ident, frames))
        return True

    def readable(self) -> bool:
        return False

    def wait(self, timeout_ms: int) -> bool:
        return bool(self.inbox)


def broker_cost(n: int = 20000) -> float:
    """us of broker-core Python per round trip: a SEND in and out, its REPLY in and out."""
    core = BrokerCore(BrokerConfig(), now=0.0)
    for ident, name, types in (
        (b"C", "client", []),
        (b"N1", "n1", ["bench"]),
        (b"N2", "n2", ["bench"]),
    ):
        reg = P.Register(
            name=name, role=P.Role.ORCHESTRATOR, types=types, origins=[name], credit=128
        )
        core.receive(ident, [P.header(P.FrameKind.REGISTER), P.encode(reg)], 0.0)
    core.output()
    codec, cids, nids = Codec(), MessageIds("client"), MessageIds("n1")
    reqs, reps = [], []
    for i in range(n):
        payload = encode_payload(Ping(i, BLOB))
        req = Envelope(cids.next(), Kind.SEND, recipient=AgentId("bench", "*"), payload=payload)
        reqs.append(codec.encode(req))
        reps.append(
            codec.encode(Envelope(nids.next(), Kind.REPLY, correlation=req.id, payload=payload))
        )
    receive, output = core.receive, core.output
    t = time.perf_counter()
    for i in range(n):
        receive(b"C", [DELIVER, reqs[i]], 1.0)  # the client's request...
        node = output().messages[-1][0]
        receive(node, [REPLY, reps[i]], 1.0)  # ...answered by its node
        output()
    dt = time.perf_counter() - t
    assert core.stats["replies"] == n, core.stats
    return dt / n * 1e6


async def _node_cost(cls: type, n: int) -> float:
    node = Node("tcp://127.0.0.1:1", {"bench": cls})
    node._loop = asyncio.get_running_loop()
    node.attach(node.runtime)  # what the runtime's start does, without connecting
    node.core.registered = True
    io = _FakeIO()
    node._io = io
    codec, ids = Codec(), MessageIds()
    bodies = [
        codec.encode(
            Envelope(
                ids.next(),
                Kind.SEND,
                recipient=AgentId("bench", "k"),
                payload_type=wire_name(Ping),
                payload=encode_payload(Ping(i, BLOB)),
            )
        )
        for i in range(n)
    ]
    loop = node._loop
    done = loop.create_future()
    todo = iter(bodies)

    def step() -> None:
        """One delivery per loop callback, as the socket's reader drains (no task running,
        so the handler's first step runs eagerly); the next once this one is answered."""
        if len(io.sent) == n:
            done.set_result(None)
            return
        if not node.core.running:
            body = next(todo, None)
            if body is not None:
                io.inbox.append([DELIVER, body])
                node._drain()
        loop.call_soon(step)

    t = time.perf_counter()
    loop.call_soon(step)
    await done
    dt = time.perf_counter() - t
    await node.runtime.stop()
    return dt / n * 1e6


async def _client_cost(n: int) -> float:
    c = MeshClient("tcp://127.0.0.1:1")
    loop = asyncio.get_running_loop()
    c._loop = loop
    c.core.window, c.core.registered = 1024, True
    c._registered.set()
    codec, ids = Codec(), MessageIds()

    class Answering(_FakeIO):
        def send(self, frames: list[bytes], ident: bytes | None = None) -> bool:
            for body in frames[1:]:
                req = codec.decode(body)
                rep = msgspec.structs.replace(
                    req, id=ids.next(), kind=Kind.REPLY, correlation=req.id
                )
                self.inbox.append([REPLY, codec.encode(rep)])
            loop.call_soon(c._drain)  # the reply "wakes" the client's loop
            return True

    c._io = Answering()
    to = AgentId("bench", "*")
    t = time.perf_counter()
    for i in range(n):
        await c.send(Ping(i, BLOB), to=to)
    return (time.perf_counter() - t) / n * 1e6


def python_costs(n: int = 20000) -> list[str]:
    import uvloop

    return [
        f"broker: {broker_cost(n):5.2f} us Python per round trip (2 messages in, 2 out)",
        f"node (engine.Agent on the node's Runtime): {uvloop.run(_node_cost(Bench, n)):5.2f} us "
        "per delivery",
        f"client: {uvloop.run(_client_cost(n)):5.2f} us per round trip "
        "(incl. the fake broker's decode + encode)",
    ]
