"""When a mesh peer's output leaves: at once when alone (latency), batched under load.

The peer's socket is replaced by a recording stand-in of ``FrameIO`` so the test sees every
multipart message the peer sends, in order, and when.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
import zmq
from mesh_agents import Echo, Ping, Pong, Sleep

from engine.mesh import MeshClient, Node
from engine.mesh import protocol as P
from engine.messages import AgentId, Codec, Envelope, Kind, MessageIds, encode_payload
from tests._wait import until

DELIVER = P.header(P.FrameKind.DELIVER)
REPLY = P.header(P.FrameKind.REPLY)
codec = Codec()


class Recorder:
    """A FrameIO that records sends and hands over queued input."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.inbox: list[list[bytes]] = []

    def recv(self) -> list[bytes] | None:
        return self.inbox.pop(0) if self.inbox else None

    def recv_many(self, limit: int) -> list[list[bytes]]:
        msgs, self.inbox = self.inbox[:limit], self.inbox[limit:]
        return msgs

    def recv_many_meta(self, limit: int, prop: str) -> list[tuple[list[bytes], str | None]]:
        return [(m, None) for m in self.recv_many(limit)]

    def send(self, frames: list[bytes], ident: bytes | None = None) -> bool:
        self.sent.append(list(frames))
        return True

    def readable(self) -> bool:
        return bool(self.inbox)

    def wait(self, timeout_ms: int) -> bool:
        return bool(self.inbox)


def _client(loop: asyncio.AbstractEventLoop) -> tuple[MeshClient, Recorder]:
    c = MeshClient("tcp://127.0.0.1:1")
    io = Recorder()
    c._loop, c._io = loop, io
    c.core.window, c.core.registered = 1024, True
    c._registered.set()
    return c, io


def _answer(c: MeshClient, io: Recorder, msg: list[bytes]) -> None:
    ids = MessageIds()
    for body in msg[1:]:
        req = codec.decode(body)
        rep = msgspec.structs.replace(req, id=ids.next(), kind=Kind.REPLY, correlation=req.id)
        io.inbox.append([REPLY, codec.encode(rep)])
    c._drain()


def test_a_lone_request_leaves_before_the_caller_yields() -> None:
    async def main() -> None:
        c, io = _client(asyncio.get_running_loop())
        task = asyncio.ensure_future(c.send(Ping(1), to=AgentId("echo", "x"), reply_type=Ping))
        await asyncio.sleep(0)  # the task ran up to its await: the request is already out
        assert len(io.sent) == 1 and io.sent[0][0] == DELIVER and len(io.sent[0]) == 2
        _answer(c, io, io.sent[0])
        assert await task == Ping(1)

    asyncio.run(main())


def test_requests_in_flight_together_share_one_message() -> None:
    async def main() -> None:
        c, io = _client(asyncio.get_running_loop())
        tasks = [
            asyncio.ensure_future(c.send(Ping(i), to=AgentId("echo", "x"), reply_type=Ping))
            for i in range(6)
        ]
        for _ in range(3):
            await asyncio.sleep(0)
        # the first went alone; the other five were queued while it was in flight
        assert [len(m) - 1 for m in io.sent] == [1, 5]
        for m in list(io.sent):
            _answer(c, io, m)
        assert [r.n for r in await asyncio.gather(*tasks)] == list(range(6))

    asyncio.run(main())


def _node(loop: asyncio.AbstractEventLoop, concurrency: int = 64) -> tuple[Node, Recorder]:
    node = Node("tcp://127.0.0.1:1", {"echo": Echo}, concurrency=concurrency)
    io = Recorder()
    node._loop, node._io = loop, io
    node.attach(node.runtime)  # what the runtime's start does, without connecting
    node.core.registered = True
    return node, io


def _delivery(ids: MessageIds, msg: Any) -> bytes:
    env = Envelope(
        ids.next(),
        Kind.SEND,
        recipient=AgentId("echo", "k"),
        payload_type=type(msg).__name__,
        payload=encode_payload(msg),
    )
    return codec.encode(env)


def test_a_node_answers_the_last_running_delivery_at_once() -> None:
    async def main() -> None:
        node, io = _node(asyncio.get_running_loop())
        io.inbox.append([DELIVER, _delivery(MessageIds(), Ping(1))])
        node._drain()
        for _ in range(20):  # drained inside a task, the delivery runs in a task too
            if io.sent:
                break
            await asyncio.sleep(0)
        assert len(io.sent) == 1 and io.sent[0][0] == REPLY
        assert node._flush_scheduled is False  # no extra flush queued behind it
        reply = codec.decode(io.sent[0][1])
        assert msgspec.msgpack.decode(reply.payload, type=Pong).n == 2
        await node.runtime.stop()

    asyncio.run(main())


def test_a_node_batches_replies_while_others_run() -> None:
    async def main() -> None:
        node, io = _node(asyncio.get_running_loop())
        ids = MessageIds()
        io.inbox.extend([DELIVER, _delivery(ids, Sleep(0.01 * (i + 1), i))] for i in range(3))
        io.inbox.append([DELIVER, *(_delivery(ids, Ping(i)) for i in range(4))])
        node._drain()
        await until(lambda: sum(len(m) - 1 for m in io.sent) == 7)
        bodies = [len(m) - 1 for m in io.sent]
        assert sum(bodies) == 7 and all(m[0] == REPLY for m in io.sent)
        assert bodies[0] == 4  # the four pings answered while the sleeps ran: one message
        await node.runtime.stop()

    asyncio.run(main())


def test_a_failing_message_does_not_drop_the_rest_of_its_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        node, io = _node(asyncio.get_running_loop())

        def broken(ids: object) -> None:
            raise RuntimeError("bug in the ACK path")

        node._on_ack = broken  # type: ignore[method-assign]
        ack = [P.header(P.FrameKind.ACK), P.encode_ids([MessageIds().next()])]
        io.inbox.extend([ack, [DELIVER, _delivery(MessageIds(), Ping(5))]])
        node._drain()
        for _ in range(20):
            if io.sent:
                break
            await asyncio.sleep(0)
        assert [m[0] for m in io.sent] == [REPLY]
        assert msgspec.msgpack.decode(codec.decode(io.sent[0][1]).payload, type=Pong).n == 6
        await node.runtime.stop()

    asyncio.run(main())
    assert "bug in the ACK path" in caplog.text


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "task"])
def test_a_delivery_cancelled_while_waiting_for_its_turn_is_answered(eager: bool) -> None:
    """concurrency=1: the 2nd..4th delivery wait on the node; two of them are cancelled
    there, before they start. Drained from a loop callback (as the socket's reader is) the
    first step of each runs eagerly; drained inside a task, each runs in a task."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        node, io = _node(loop, concurrency=1)

        async def drain() -> None:
            if eager:
                loop.call_soon(node._drain)
            else:
                node._drain()
            await asyncio.sleep(0)

        ids = MessageIds()
        bodies = [_delivery(ids, Sleep(0.05, i)) for i in range(4)]
        io.inbox.append([DELIVER, *bodies])
        await drain()  # the 2nd..4th now wait for the first to finish
        assert len(node._active) == 1 and len(node._waiting) == 3
        cancels = [
            codec.encode(Envelope(ids.next(), Kind.CANCEL, correlation=codec.decode(b).id))
            for b in bodies[1:3]
        ]
        io.inbox.append([DELIVER, *cancels])
        await drain()
        await until(lambda: sum(len(m) - 1 for m in io.sent) == 4)
        replies = {(env := codec.decode(b)).correlation: env for m in io.sent for b in m[1:]}
        want = [codec.decode(b).id for b in bodies]
        assert sorted(replies, key=str) == sorted(want, key=str)  # every delivery answered
        for i in (1, 2):
            env = replies[want[i]]
            assert env.kind is Kind.ERROR
            assert b"cancelled by the sender" in bytes(env.payload)
        assert [replies[want[i]].kind for i in (0, 3)] == [Kind.REPLY, Kind.REPLY]
        assert not node.core.running  # redeliveries are not dropped as duplicates
        assert not node._active and not node._waiting
        await node.runtime.stop()

    asyncio.run(main())


def test_input_arriving_while_re_registering_is_read_without_waiting_for_the_ticker() -> None:
    async def main() -> None:
        c, io = _client(asyncio.get_running_loop())
        welcome = P.encode(P.Welcome("broker-2", 500, P.MAX_FRAME, 64))
        sent = io.send

        def send(frames: list[bytes], ident: bytes | None = None) -> bool:
            # The welcome arrives while the REGISTER goes out; the send took the FD's edge,
            # so only an explicit readability check finds it.
            if frames[0] == P.header(P.FrameKind.REGISTER):
                io.inbox.append([P.header(P.FrameKind.REGISTER), welcome])
            return sent(frames, ident)

        io.send = send  # type: ignore[method-assign]
        bye = P.Disconnect(P.DisconnectCode.UNKNOWN_PEER, "who are you")
        io.inbox.append([P.header(P.FrameKind.DISCONNECT), P.encode(bye)])
        c._drain()
        assert [m[0] for m in io.sent] == [P.header(P.FrameKind.REGISTER)]
        for _ in range(5):  # a few loop iterations; the ticker (never started) is not needed
            await asyncio.sleep(0)
        assert c.broker_id == "broker-2" and c._registered.is_set()
        assert not io.inbox

    asyncio.run(main())


def test_a_send_refused_after_its_first_part_is_requeued_not_lost() -> None:
    async def main() -> None:
        node, io = _node(asyncio.get_running_loop())
        sent = io.send
        refusals = 1

        def send(frames: list[bytes], ident: bytes | None = None) -> bool:
            nonlocal refusals
            if refusals:
                refusals -= 1
                raise zmq.Again()  # what FrameSocket raises when a later part is refused
            return sent(frames, ident)

        io.send = send  # type: ignore[method-assign]
        ack = MessageIds().next()
        node.core.out.acks.append(ack)
        node._flush()  # must not raise: the ACK stays queued
        assert not io.sent and node.core.out
        node._flush()  # the retry (the ticker's) sends it
        assert [m[0] for m in io.sent] == [P.header(P.FrameKind.ACK)]
        assert P.decode_ids(io.sent[0][1:]) == [ack]
        await node.runtime.stop()

    asyncio.run(main())
