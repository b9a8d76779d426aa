"""MeshTransport: the runtime's Transport protocol over the mesh (runtime-side stand-in host)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mesh_agents import Boom, Echo, Ping, Pong, Recorder, Sleep

from engine import Agent, Context, Runtime, handler
from engine.errors import DeadlineExceeded, RemoteError, UndeliverableError
from engine.mesh import Broker, MeshClient, MeshTransport, Node
from engine.messages import (
    AgentId,
    Envelope,
    ErrorInfo,
    Kind,
    MessageIds,
    TopicId,
    decode_payload,
    encode_payload,
)
from tests._wait import until

pytestmark = pytest.mark.timeout(60)
HB = 0.1


class Doubler(Agent):
    @handler
    async def on_ping(self, msg: Ping, ctx: Context) -> Pong:
        return Pong(msg.n * 2, node="runtime")


class FakeRuntime:
    """The two things a transport needs from a runtime: ``origin`` and ``deliver``."""

    def __init__(self, transport: MeshTransport) -> None:
        self.ids = MessageIds()
        self.origin = self.ids.origin
        self.transport = transport
        self.inbox: list[Envelope] = []
        self.waiters: dict[object, asyncio.Future[Envelope]] = {}

    def deliver(self, env: Envelope) -> None:
        self.inbox.append(env)
        if env.kind is Kind.SEND:  # serve "echo": Ping(n) -> Ping(n * 10)
            msg = decode_payload(env.payload, Ping)
            self.transport.send(
                Envelope(
                    self.ids.next(),
                    Kind.REPLY,
                    sender=env.recipient,
                    correlation=env.id,
                    payload_type="Ping",
                    payload=encode_payload(Ping(msg.n * 10)),
                )
            )
        elif env.correlation in self.waiters:
            self.waiters.pop(env.correlation).set_result(env)

    async def call(self, n: int, type_: str) -> Envelope:
        env = Envelope(
            self.ids.next(),
            Kind.SEND,
            recipient=AgentId(type_, "k"),
            payload_type="Ping",
            payload=encode_payload(Ping(n)),
        )
        fut = asyncio.get_running_loop().create_future()
        self.waiters[env.id] = fut
        self.transport.send(env)
        return await asyncio.wait_for(fut, 5)


def test_two_runtimes_talk_through_the_broker(broker: Broker) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        ta, tb = MeshTransport(ep, heartbeat=HB), MeshTransport(ep, heartbeat=HB)
        server, client = FakeRuntime(ta), FakeRuntime(tb)
        await ta.start(server)
        ta.announce("echo")
        ta.subscribe("news.*")
        await tb.start(client)
        await until(lambda: broker.peers().get(ta.peer.name, {}).get("types") == ["echo"])
        replies = await asyncio.gather(*(client.call(i, "echo") for i in range(300)))
        assert [decode_payload(r.payload, Ping).n for r in replies] == [i * 10 for i in range(300)]
        tb.send(
            Envelope(
                client.ids.next(),
                Kind.PUBLISH,
                topic=TopicId("news.eu"),
                payload_type="Ping",
                payload=encode_payload(Ping(5)),
            )
        )
        await until(lambda: any(e.kind is Kind.PUBLISH for e in server.inbox))
        assert [e.topic for e in server.inbox if e.kind is Kind.PUBLISH] == [TopicId("news.eu")]
        # no server for the type: the runtime receives an ERROR envelope, not silence
        err = await client.call(1, "ghost")
        assert err.kind is Kind.ERROR
        info = decode_payload(err.payload, ErrorInfo)
        assert info.type_name == "UndeliverableError" and "ghost" in info.message
        await tb.close()
        await ta.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_runtime_with_mesh_reaches_nodes_and_serves_mesh_traffic(broker: Broker) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        async with Node(ep, {"echo": Echo}, name="remote", heartbeat=HB), Runtime(mesh=ep) as rt:
            rt.register("doubler", Doubler)
            # the runtime's send reaches an agent on another node
            assert (await rt.send(Ping(1), to=AgentId("echo", "a"), timeout=5)).n == 2
            replies = await asyncio.gather(
                *(rt.send(Ping(i), to=AgentId("echo", f"k{i}"), timeout=5) for i in range(100))
            )
            assert [r.n for r in replies] == [i + 1 for i in range(100)]
            with pytest.raises(RemoteError, match="nope"):
                await rt.send(Boom("nope"), to=AgentId("echo", "a"), timeout=5)
            with pytest.raises(UndeliverableError, match="ghost"):
                await rt.send(Ping(1), to=AgentId("ghost", "a"), timeout=5)
            # and the runtime's local agents serve mesh traffic
            name = rt._transport.peer.name
            await until(lambda: "doubler" in broker.peers().get(name, {}).get("types", []))
            async with MeshClient(ep, heartbeat=HB) as c:
                got = await c.send(Ping(21), to=AgentId("doubler", "z"), timeout=5)
                assert got == Pong(42, node="runtime")

    asyncio.run(asyncio.wait_for(main(), 30))


def test_runtime_rejects_mesh_and_transport_together() -> None:
    with pytest.raises(ValueError, match="either mesh= or transport="):
        Runtime(mesh="tcp://127.0.0.1:1", transport=MeshTransport("tcp://127.0.0.1:1"))


class Raiser(Agent):
    """Raises what the message names."""

    @handler
    async def on_boom(self, msg: Boom, ctx: Context) -> Pong:
        errors: dict[str, Exception] = {
            "undeliverable": UndeliverableError("gone"),
            "deadline": DeadlineExceeded("late"),
            "value": ValueError("bad"),
        }
        raise errors[msg.text]


def test_meshclient_and_runtime_raise_the_same_classes(broker: Broker) -> None:
    """One mapping of errors to and from the wire (engine.runtime._wire) serves both."""
    ep = broker.endpoints[0]

    async def main() -> None:
        async with (
            Node(ep, {"raiser": Raiser}, name="r", heartbeat=HB),
            MeshClient(ep, heartbeat=HB) as client,
            Runtime(mesh=ep) as rt,
        ):
            to = AgentId("raiser", "k")
            cases: list[tuple[Any, AgentId, type[Exception]]] = [
                (Boom("undeliverable"), to, UndeliverableError),
                (Boom("deadline"), to, DeadlineExceeded),
                (Boom("value"), to, RemoteError),
                (Ping(1), AgentId("ghost", "k"), UndeliverableError),  # a NACK, not a reply
            ]
            for msg, target, cls in cases:
                seen = []
                for send in (client.send, rt.send):
                    with pytest.raises(cls) as info:
                        await send(msg, to=target, timeout=5)
                    seen.append((type(info.value), str(info.value)))
                assert seen[0] == seen[1], seen

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_runtime_acknowledges_a_tell_once_handled(broker: Broker) -> None:
    """``Runtime(mesh=...)`` serving mesh traffic: a one-way message stays the broker's
    (redelivered if this runtime dies) until its handler ran."""
    ep = broker.endpoints[0]
    Recorder.DONE.clear()

    async def main() -> None:
        async with Runtime(mesh=ep) as rt, MeshClient(ep, heartbeat=HB) as c:
            rt.register("recorder", Recorder)
            name = rt._transport.peer.name  # type: ignore[union-attr]
            await until(lambda: "recorder" in broker.peers().get(name, {}).get("types", []))
            await c.tell(Sleep(0.3, 1), to=AgentId("recorder", "r"))
            assert broker.peers()[name]["inflight"] == 1
            await until(lambda: broker.peers()[name]["inflight"] == 0)
            assert Recorder.DONE == [1]

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_runtime_announcing_types_under_hmac_keeps_serving() -> None:
    """Registering an agent after start sends REGISTER again; under HMAC that moves the
    connection to a new session without dropping it."""
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, hmac_key=b"k")
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        transport = MeshTransport(ep, heartbeat=HB, hmac_key=b"k")
        async with (
            Runtime(transport=transport) as rt,
            MeshClient(ep, heartbeat=HB, hmac_key=b"k") as c,
        ):
            rt.register("doubler", Doubler)  # after start: announced by a new REGISTER
            name = transport.peer.name
            await until(lambda: "doubler" in b.peers().get(name, {}).get("types", []))
            replies = [
                await c.send(Ping(i), to=AgentId("doubler", "z"), timeout=10) for i in range(5)
            ]
            assert [r.n for r in replies] == [0, 2, 4, 6, 8]

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        b.stop()
    assert b.stats["malformed"] == 0
