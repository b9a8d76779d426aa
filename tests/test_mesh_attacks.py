"""The broker against a hostile peer on the same network: it must not crash, nor be fooled.

Each test is the regression test of one finding of issue 13, played over real ZeroMQ
sockets: a raw DEALER (``tests/mesh_raw.py``) sends what a well-behaved peer never would,
next to honest nodes and clients, and the test checks what the honest ones see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from mesh_agents import Echo, Ping, Pong, Recorder, Sleep
from mesh_raw import RawPeer, envelope

from engine.errors import EngineError
from engine.mesh import Broker, MeshClient, Node
from engine.mesh import protocol as P
from engine.mesh.protocol import FrameKind, NackCode, Role
from engine.mesh.security import CurveClient, generate_keys
from engine.messages import AgentId, Envelope, Kind, MessageId, encode_payload
from tests._wait import until

pytestmark = pytest.mark.timeout(60)
HB = 0.1
DEEP = b"\x91" * 3000 + b"\xc0"  # [[[...nil...]]], 3,000 levels: ~3 KB


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, route_timeout=1.0, startup_grace=0.3)
    b.start()
    yield b
    b.stop()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 45))


async def still_serves(ep: str) -> None:
    """An honest node and client get a round trip through the broker."""
    async with Node(ep, {"echo": Echo}, heartbeat=HB), MeshClient(ep, heartbeat=HB) as c:
        assert (await c.send(Ping(1), to=AgentId("echo", "x"), timeout=10)).n == 2


def request(c: MeshClient, msg: Any, to: AgentId) -> Envelope:
    return Envelope(
        c.ids.next(),
        Kind.SEND,
        recipient=to,
        payload_type=type(msg).__name__,
        payload=encode_payload(msg),
    )


# -- crash by one message ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "kind"),
    [
        (None, FrameKind.REGISTER),  # before any registration
        (Role.MONITOR, FrameKind.ACK),
        (Role.WORKER, FrameKind.NACK),
        (Role.WORKER, FrameKind.CREDIT),
        (Role.ORCHESTRATOR, FrameKind.DELIVER),
    ],
)
def test_a_deeply_nested_control_body_does_not_stop_the_broker(
    broker: Broker, role: Role | None, kind: FrameKind
) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        evil = RawPeer(ep)
        if role is not None:
            await evil.welcome("evil", role=role)
        evil.send_kind(kind, DEEP)
        # a map with an unknown key whose value nests deep (msgspec skips it recursively)
        evil.send_kind(kind, b"\x82\xa4name\xa4evil\xa4junk" + DEEP)
        await still_serves(ep)
        evil.close()

    run(main())
    assert broker.running
    assert broker.stats["malformed"] >= 2


def test_a_nack_with_an_unknown_code_does_not_stop_the_broker(broker: Broker) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        worker = RawPeer(ep)
        await worker.welcome("w", types=["echo"], credit=4, heartbeat_ms=100)
        async with MeshClient(ep, heartbeat=HB) as c:
            task = asyncio.ensure_future(c.send(Ping(1), to=AgentId("echo", "k"), timeout=20))
            body = (await worker.wait_for(FrameKind.DELIVER))[0][0]
            mid = msgspec.msgpack.decode(body, type=Envelope).id
            worker.send_kind(FrameKind.NACK, P.encode_nacks([P.NackItem(mid, 99, "?")]))
            # a NACK of an unknown code counts as REJECTED: the request goes to a real node
            async with Node(ep, {"echo": Echo}, name="honest", heartbeat=HB):
                assert (await task).n == 2
        worker.close()

    run(main())
    assert broker.running


# -- role check bypass -------------------------------------------------------------------


def test_a_signed_register_does_not_skip_the_curve_role_binding(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, curve_dir=str(keys))
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        reg = P.encode(P.Register("evil", role=Role.ORCHESTRATOR, origins=["evil"]))
        signed = P.header(FrameKind.REGISTER | P.SIGNED)
        for trailer in (b"\x00" * 32, b"\x00" * P.TRAILER_SIZE):
            evil = RawPeer(ep, curve=CurveClient.from_dir(keys, "worker"))
            evil.send([signed, reg, trailer])
            evil.send_kind(FrameKind.REGISTER, reg)
            await evil.wait_for(FrameKind.DISCONNECT, count=1)
            assert all(d.code == P.DisconnectCode.FORBIDDEN for d in evil.disconnects())
            evil.close()
        assert "evil" not in b.peers()

    try:
        run(main())
    finally:
        b.stop()


def test_curve_with_hmac_still_binds_the_role_to_the_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, curve_dir=str(keys), hmac_key=b"k")
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        worker_as_orchestrator = MeshClient(
            ep, heartbeat=HB, curve_dir=str(keys), curve_key="worker", hmac_key=b"k"
        )
        with pytest.raises(EngineError, match="may only register as worker"):
            await worker_as_orchestrator.start(timeout=5)

    try:
        run(main())
    finally:
        b.stop()


# -- forged and stolen replies -------------------------------------------------------------


def _forged_reply(mid: MessageId) -> bytes:
    return envelope(
        MessageId("forger", 1), Kind.REPLY, correlation=mid, payload=Pong(666, "forged")
    )


@pytest.mark.parametrize("registered", [True, False], ids=["worker", "unregistered"])
def test_a_reply_is_accepted_only_from_the_node_given_the_request(
    broker: Broker, registered: bool
) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        forger = RawPeer(ep)
        if registered:
            await forger.welcome("forger", types=["other"], credit=4)
        async with (
            Node(ep, {"echo": Echo}, name="honest", heartbeat=HB),
            MeshClient(ep, heartbeat=HB) as c,
        ):
            env = request(c, Sleep(0.3, 7), AgentId("echo", "k"))
            task = asyncio.ensure_future(c.request(env, timeout=20))
            for _ in range(3):
                forger.send_kind(FrameKind.REPLY, _forged_reply(env.id))
                await asyncio.sleep(0.02)
            reply = msgspec.msgpack.decode((await task).payload, type=Pong)
            assert reply == Pong(7, reply.node) and reply.node != "forged"
        forger.close()

    run(main())
    assert broker.stats["unsolicited"] + broker.stats["unknown_peer"] >= 3


def test_a_peer_cannot_claim_another_clients_reply_origin(broker: Broker) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        async with (
            Node(ep, {"echo": Echo}, name="honest", heartbeat=HB),
            MeshClient(ep, heartbeat=HB) as victim,
        ):
            task = asyncio.ensure_future(
                victim.send(Sleep(0.3, 5), to=AgentId("echo", "k"), timeout=20)
            )
            thief = RawPeer(ep)
            thief.register("thief", role=Role.ORCHESTRATOR, origins=[victim.ids.origin])
            assert (await task).n == 5
            # the broker answers this after the reply was routed: nothing came before it
            thief.send_kind(FrameKind.HEARTBEAT)
            await thief.wait_for(FrameKind.DISCONNECT, timeout=5, count=2)
            assert FrameKind.REPLY not in thief.kinds()
            assert [d.code for d in thief.disconnects()] == [
                P.DisconnectCode.RETRY,
                P.DisconnectCode.UNKNOWN_PEER,
            ]
            thief.close()

    run(main())


# -- name takeover -------------------------------------------------------------------------


def test_registering_a_live_nodes_name_does_not_kick_it_off(broker: Broker) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        async with (
            Node(ep, {"echo": Echo}, name="n1", heartbeat=HB) as n1,
            MeshClient(ep, heartbeat=HB) as c,
        ):
            task = asyncio.ensure_future(c.send(Sleep(1.0, 9), to=AgentId("echo", "k"), timeout=30))
            await until(lambda: broker.peers()["n1"]["inflight"])
            usurper = RawPeer(ep)
            usurper.register("n1", types=["echo"], credit=8)
            await usurper.wait_for(FrameKind.DISCONNECT)
            assert (await task).n == 9
            assert n1.stats["executed"] == 1
            usurper.close()

    run(main())
    assert broker.stats["redelivered"] == 0


# -- lost one-way messages -------------------------------------------------------------------


def test_a_tell_is_acknowledged_only_after_it_was_handled(broker: Broker) -> None:
    """The node ACKs a one-way message to the broker once its handler ran (before, the
    broker forgot it when it entered the mailbox, and a node crash lost it)."""
    ep = broker.endpoints[0]
    Recorder.DONE.clear()

    async def main() -> None:
        async with (
            Node(ep, {"recorder": Recorder}, name="rec", heartbeat=HB),
            MeshClient(ep, heartbeat=HB) as c,
        ):
            await c.tell(Sleep(0.3, 1), to=AgentId("recorder", "r"))  # the node has it
            assert broker.peers()["rec"]["inflight"] == 1
            await until(lambda: broker.peers()["rec"]["inflight"] == 0)
            assert Recorder.DONE == [1]  # acknowledged only once handled

    run(main())


# -- unbounded resources ---------------------------------------------------------------------


def test_the_submission_window_is_enforced() -> None:
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, startup_grace=30, client_credit=64)
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        raw = RawPeer(ep)
        welcome = await raw.welcome("flood", role=Role.ORCHESTRATOR, origins=["flood"])
        assert welcome.credit == 64
        bodies = [
            envelope(MessageId("flood", i), to=AgentId("nobody", "k"), payload=Ping(i))
            for i in range(200)
        ]
        raw.send_kind(FrameKind.DELIVER, *bodies)
        await until(lambda: len(raw.nacks()) >= 136)
        busy = [n for n in raw.nacks() if n.code == NackCode.BUSY]
        assert len(busy) == 136 and all(n.retry_ms > 0 for n in busy)
        assert b.queued == 64
        raw.close()

    try:
        run(main())
    finally:
        b.stop()


def test_queued_bytes_are_bounded_per_peer() -> None:
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, startup_grace=30)
    b.start()
    ep = b.endpoints[0]
    big = b"x" * (12 * 1024 * 1024)

    async def main() -> None:
        raw = RawPeer(ep)
        await raw.welcome("big", role=Role.ORCHESTRATOR, origins=["big"])
        for i in range(8):  # 96 MiB against the 64 MiB per-peer bound
            raw.send_kind(
                FrameKind.DELIVER,
                envelope(MessageId("big", i), to=AgentId("nobody", "k"), payload=big),
            )
        await until(lambda: len(raw.nacks()) >= 3)
        assert [n.code for n in raw.nacks()] == [NackCode.BUSY] * 3
        assert b.core.live_bytes <= 64 * 1024 * 1024
        raw.close()

    try:
        run(main())
    finally:
        b.stop()


def test_a_register_over_the_limits_is_refused(broker: Broker) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        for fields in (
            {"types": ["t" * (4 * 1024 * 1024)]},  # one 4 MiB type name
            {"types": [f"type-{i}" for i in range(5000)]},
            {"subscriptions": ["a.*"] * 1000},
        ):
            raw = RawPeer(ep)
            raw.register("greedy", **fields)
            await raw.wait_for(FrameKind.DISCONNECT)
            assert raw.disconnects()[0].code == P.DisconnectCode.INVALID
            raw.close()
        await still_serves(ep)
        assert "greedy" not in broker.peers()

    run(main())


def test_a_huge_register_does_not_break_the_audit_log(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, audit=str(log))
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        raw = RawPeer(ep)
        raw.register("wide", types=[f"type-{i:06d}-" + "x" * 70 for i in range(20_000)])  # 1.6 MB
        await raw.wait_for(FrameKind.DISCONNECT)
        raw.close()

    try:
        run(main())
    finally:
        b.stop()
    assert log.stat().st_size < 64 * 1024
    again = Broker("tcp://127.0.0.1:0", heartbeat=HB, audit=str(log))  # reopens the chain
    again.start()
    again.stop()


# -- CANCEL ------------------------------------------------------------------------------


def test_a_client_cannot_cancel_another_clients_request(broker: Broker) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        async with (
            Node(ep, {"echo": Echo}, name="one", concurrency=1, heartbeat=HB),
            MeshClient(ep, heartbeat=HB) as victim,
        ):
            to = AgentId("echo", "a")
            envs = [request(victim, Sleep(0.5, i), to) for i in range(3)]  # 1 runs, 2 queue
            tasks = [asyncio.ensure_future(victim.request(e, timeout=30)) for e in envs]
            await until(lambda: broker.peers()["one"]["inflight"])
            attacker = RawPeer(ep)
            await attacker.welcome("attacker", role=Role.ORCHESTRATOR, origins=["attacker"])
            for i, env in enumerate(envs):
                cancel = envelope(MessageId("attacker", i), Kind.CANCEL, to=to, correlation=env.id)
                attacker.send_kind(FrameKind.DELIVER, cancel)
            replies = [msgspec.msgpack.decode((await t).payload, type=Pong) for t in tasks]
            assert [r.n for r in replies] == [0, 1, 2]
            attacker.close()

    run(main())
    assert broker.stats["unauthorized"] == 3


# -- black-hole workers ----------------------------------------------------------------------


def test_a_worker_choosing_a_huge_heartbeat_cannot_hold_work_forever() -> None:
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, route_timeout=5)
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        hole = RawPeer(ep)
        await hole.welcome("hole", types=["echo"], credit=64, heartbeat_ms=10**9)
        async with MeshClient(ep, heartbeat=HB) as c:
            task = asyncio.ensure_future(c.send(Ping(4), to=AgentId("echo", "*"), timeout=30))
            await hole.wait_for(FrameKind.DELIVER)  # it took the work, and falls silent
            async with Node(ep, {"echo": Echo}, name="honest", heartbeat=HB):
                assert (await task).n == 5
        hole.close()

    try:
        run(main())
    finally:
        b.stop()


def test_a_delivery_never_answered_is_redelivered_after_the_delivery_timeout() -> None:
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, delivery_timeout=0.5)
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        hole = RawPeer(ep)
        await hole.welcome("hole", types=["echo"], credit=64, heartbeat_ms=100)
        async with MeshClient(ep, heartbeat=HB) as c:
            task = asyncio.ensure_future(c.send(Ping(4), to=AgentId("echo", "*"), timeout=30))
            await hole.wait_for(FrameKind.DELIVER)
            async with Node(ep, {"echo": Echo}, name="honest", heartbeat=HB):
                while not task.done():  # the hole heartbeats, so it stays registered
                    hole.send_kind(FrameKind.HEARTBEAT)
                    await asyncio.sleep(0.05)
                assert (await task).n == 5
            # the broker told the hole to stop what it would not finish
            cancels = [
                msgspec.msgpack.decode(body, type=Envelope)
                for m in hole.of_kind(FrameKind.DELIVER)
                for body in m
            ]
            assert any(e.kind is Kind.CANCEL for e in cancels)
        hole.close()

    try:
        run(main())
    finally:
        b.stop()
    assert b.stats["timeouts"] >= 1
