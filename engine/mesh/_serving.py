"""How a mesh node runs deliveries: concurrency slots, eager first steps, replies.

These are the node half of :class:`engine.mesh.MeshPeer`'s shell: the protocol decisions
(what is a duplicate, what to answer) are :class:`~engine.mesh.peer_core.PeerCore`'s.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any

import msgspec

from engine.errors import DecodeError, RemoteError
from engine.messages import (
    Envelope,
    ErrorInfo,
    Kind,
    MessageId,
    decode_payload,
    message_class,
)
from engine.runtime._wire import error_from_info

__all__ = ["Slots", "decode_reply", "empty_reply", "error_reply", "resume"]


class Slots:
    """At most ``n`` deliveries run at once; waiters get a freed slot in FIFO order.

    PERF: a free slot is taken without asyncio.Semaphore's coroutine calls (~1.5 us per
    delivery, benches/mesh_seq_profile.py).
    """

    __slots__ = ("free", "loop", "waiters")

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def wait(self) -> None:
        """Wait (FIFO) until a running delivery hands its slot over."""
        assert self.loop is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        self.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot, then cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot goes straight to the next waiter
                return
        self.free += 1


async def resume(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Continue a coroutine that suspended on ``yielded`` during an eager first step.

    This is what ``asyncio.Task.__step`` does: wait for the future the coroutine yielded
    (``None`` = a bare yield), then send into it again; cancellation is thrown into it.
    """
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                yielded._asyncio_future_blocking = False  # the Task protocol's handshake
                await yielded
        except asyncio.CancelledError:
            if yielded is None or not yielded.done():  # this task is cancelled
                try:
                    yielded = coro.throw(asyncio.CancelledError())
                except StopIteration:
                    return
                continue
        except BaseException:  # the future failed: the coroutine sees it on send()
            pass
        try:
            yielded = coro.send(None)
        except StopIteration:
            return


def error_reply(env: Envelope, exc: BaseException, mid: MessageId) -> Envelope:
    """The ERROR envelope answering ``env`` for a handler that raised ``exc``."""
    info = ErrorInfo(type(exc).__name__, str(exc))
    return Envelope(
        mid,
        Kind.ERROR,
        sender=env.recipient,
        recipient=env.sender,
        correlation=env.id,
        payload_type="ErrorInfo",
        payload=msgspec.Raw(msgspec.msgpack.encode(info)),
    )


def empty_reply(env: Envelope, mid: MessageId) -> Envelope:
    """A REPLY without a value (a host returned nothing for a request)."""
    return Envelope(mid, Kind.REPLY, sender=env.recipient, recipient=env.sender, correlation=env.id)


def decode_reply(env: Envelope, reply_type: Any = None) -> Any:
    """The message inside a REPLY envelope; an ERROR envelope raises the sender's error.

    Engine errors keep their class (``UndeliverableError``, ``DeadlineExceeded``, ...),
    a handler's own exception arrives as :class:`RemoteError` — the same mapping
    ``Runtime(mesh=...)`` uses (``engine.runtime._wire``).
    """
    if env.kind is Kind.ERROR:
        try:
            info = decode_payload(env.payload, ErrorInfo)
        except DecodeError:
            raise RemoteError("UnknownError", "undecodable error reply") from None
        raise error_from_info(info)
    if reply_type is None:
        if env.payload_type == "" or env.payload == b"\xc0" or not bytes(env.payload):
            return None
        reply_type = message_class(env.payload_type)  # MessageTypeConflict if ambiguous
        if reply_type is None:
            return env.payload
    return decode_payload(env.payload, reply_type)
