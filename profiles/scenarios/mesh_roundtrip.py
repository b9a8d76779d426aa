"""Mesh round trips: a broker, two nodes hosting an echo agent and a client, on 127.0.0.1.

Everything runs in this process (the broker on its own thread, nodes and the client on one
event loop) so the profile shows the whole path: client encode -> broker route -> node
decode, handler, reply -> broker -> client.
"""

from __future__ import annotations

import _common

opts = _common.args()
_common.require("engine.mesh", "mesh")
if opts.check:
    raise SystemExit(0)

import asyncio  # noqa: E402
import time  # noqa: E402

from engine import Agent, Context, handler  # noqa: E402
from engine.mesh import Broker, MeshClient, Node  # noqa: E402
from engine.messages import AgentId, Message  # noqa: E402


class Ping(Message, tag="profile.mesh.Ping"):
    n: int


class Pong(Message, tag="profile.mesh.Pong"):
    n: int


class Echo(Agent):
    @handler
    async def on_ping(self, msg: Ping, ctx: Context) -> Pong:
        return Pong(msg.n + 1)


async def main(seconds: float) -> int:
    broker = Broker("tcp://127.0.0.1:0")
    broker.start()
    ep = broker.endpoints[0]
    sent = 0
    try:
        async with (
            Node(ep, {"echo": Echo}, name="a"),
            Node(ep, {"echo": Echo}, name="b"),
            MeshClient(ep) as client,
        ):
            await client.send(Ping(0), to=AgentId("echo", "*"), timeout=10)  # warm-up
            with _common.profiled():
                deadline = time.perf_counter() + seconds
                while time.perf_counter() < deadline:
                    replies = await asyncio.gather(
                        *(
                            client.send(Ping(i), to=AgentId("echo", "*"), timeout=10)
                            for i in range(64)
                        )
                    )
                    assert replies[0] == Pong(1)
                    sent += 64
    finally:
        broker.stop()
    return sent


n = asyncio.run(main(opts.seconds))
print(f"mesh_roundtrip: {n} round trips")
