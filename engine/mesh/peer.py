"""An asyncio mesh peer: one DEALER socket around a :class:`~engine.mesh.peer_core.PeerCore`.

The protocol decisions (registration, window, which reply is ours, duplicates, HMAC) are
the core's; this shell owns the socket, the futures callers await and the handlers a
node runs. I/O is batched: the socket's file descriptor wakes the loop, which drains
every waiting message with NOBLOCK; what a loop iteration produces (submissions, replies,
acks) leaves as one multipart message per kind, flushed once via ``call_soon``.

:class:`engine.mesh.MeshClient` is this class with other defaults. A peer that serves
agents carries a runtime (``Runtime(mesh=...)``, :class:`engine.mesh.Node`): it hands every
delivery to the runtime (:meth:`attach`) and queues the runtime's envelopes (:meth:`post`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import msgspec
import zmq

from engine.errors import DecodeError, EncodeError, EngineError, ProtocolError, UndeliverableError
from engine.mesh import protocol as P
from engine.mesh._io import FrameIO, frame_socket
from engine.mesh._node_side import NodeSide, Sink
from engine.mesh._replies import decode_reply
from engine.mesh._signing import Keys, as_keys
from engine.mesh.peer_core import (
    Accepted,
    Cancelled,
    Delivered,
    Disconnected,
    Event,
    PeerCore,
    Refused,
    Replied,
    Welcomed,
)
from engine.mesh.protocol import DisconnectCode, FrameKind, Role
from engine.mesh.security import CurveClient
from engine.messages import (
    AgentId,
    Envelope,
    Kind,
    MessageId,
    MessageIds,
    TopicId,
    encode_payload,
    wire_name,
)
from engine.observe.tracing import Tracer, current_traceparent
from engine.runtime._wire import error_info

__all__ = ["MeshPeer", "Sink", "decode_reply"]

log = logging.getLogger("engine.mesh.peer")


class MeshPeer(NodeSide):
    """A peer of the mesh. ``await start()`` connects and registers; ``await close()`` leaves.

    As a client: :meth:`send` (request/reply), :meth:`publish`, :meth:`request` (raw
    envelopes). Serving agents (a runtime :meth:`attach`-ed): at most ``concurrency``
    deliveries run at once, and the broker never has more than ``2 * concurrency``
    outstanding here. A delivery already executed here
    (same envelope id) is answered from a cache bounded by ``idempotency_cache`` entries
    and ``idempotency_bytes`` instead of running again. A one-way message (``tell``) is
    acknowledged once handled. ``tracer`` opens a ``handler`` span around each delivery
    the attached runtime runs.
    """

    def __init__(
        self,
        connect: str,
        *,
        name: str | None = None,
        role: Role | str = Role.ORCHESTRATOR,
        concurrency: int = 64,
        heartbeat: float = 0.5,
        curve: CurveClient | None = None,
        hmac_key: Keys | bytes | str | None = None,
        max_frame: int = P.MAX_FRAME,
        idempotency_cache: int = 100_000,
        idempotency_bytes: int = 64 * 1024 * 1024,
        tracer: Tracer | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.connect = connect
        self.name = name or f"peer-{os.urandom(4).hex()}"
        self.role = Role(role)
        self.concurrency = concurrency
        self.heartbeat = heartbeat
        self.curve = curve
        self.tracer = tracer  # read by the attached runtime: a span per delivery
        self.ids = MessageIds()
        self.core = PeerCore(
            name=self.name,
            role=self.role,
            origin=self.ids.origin,
            heartbeat=heartbeat,
            keys=as_keys(hmac_key),
            max_frame=max_frame,
            cache_size=idempotency_cache,
            cache_bytes=idempotency_bytes,
        )
        self.stats = self.core.stats
        self._sock: zmq.Socket[Any] | None = None
        self._io: FrameIO | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._registered = asyncio.Event()
        self._last_register = 0.0
        self._tick_task: asyncio.Task[None] | None = None
        self._fatal: EngineError | None = None
        self._closing = False  # deliveries are refused from now on
        self._closed = False
        self._window_free = asyncio.Event()
        self._requests: dict[MessageId, asyncio.Future[Envelope]] = {}
        self._publishes: dict[MessageId, asyncio.Future[None]] = {}
        self._sink: Sink | None = None  # the runtime deliveries go to (attach)
        self._active: set[MessageId] = set()
        self._waiting: deque[Envelope] = deque()
        self.announced: dict[str, None] = {}
        self.patterns: dict[str, None] = {}

    @property
    def broker_id(self) -> str | None:
        return self.core.broker_id

    @property
    def broker_reachable(self) -> bool:
        """Registered, and heard from the broker within the last three heartbeats."""
        return (
            self.core.registered
            and time.monotonic() - self.core.last_heard <= 3 * self.core.heartbeat
        )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:
        """Connect and register; raises ``TimeoutError`` if no broker answers in time."""
        await self.join(timeout)

    async def join(self, timeout: float = 10.0) -> None:
        """What :meth:`start` does (a subclass's ``start`` may do more around it)."""
        self._loop = asyncio.get_running_loop()
        self._open()
        self._tick_task = self._loop.create_task(self._ticker())
        try:
            await asyncio.wait_for(self._registered.wait(), timeout)
        except TimeoutError:
            await self.close(graceful=False)
            raise TimeoutError(
                f"no mesh broker answered at {self.connect} within {timeout} s"
            ) from None
        if self._fatal is not None:
            err = self._fatal
            await self.close(graceful=False)
            raise err

    async def close(self, graceful: bool = True, timeout: float = 5.0) -> None:
        """Leave the mesh: refuse new deliveries, DISCONNECT (when graceful), close.

        A node finishes its running deliveries first (:meth:`engine.mesh.Node.close`).
        """
        if self._closed:
            return
        self._closed = self._closing = True
        self._refuse_waiting()
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        if self._sock is not None:
            if graceful:
                self.core.out.other.append(P.disconnect(DisconnectCode.LEAVING, "closing"))
                self._flush()
            self._close_socket(linger=200 if graceful else 0)
        err = UndeliverableError("mesh peer closed")
        futures: list[asyncio.Future[Any]] = [*self._requests.values(), *self._publishes.values()]
        for fut in futures:
            if not fut.done():
                fut.set_exception(err)
        self._requests.clear()
        self._publishes.clear()
        self._window_free.set()

    async def __aenter__(self) -> MeshPeer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self) -> None:
        assert self._loop is not None
        sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 200_000)
        sock.setsockopt(zmq.RCVHWM, 200_000)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self.curve is not None:
            self.curve.apply(sock)
        sock.connect(self.connect)
        self._sock = sock
        self._io = frame_socket(sock)
        self._fd = int(sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._drain)
        self.core.last_heard = time.monotonic()
        self._send_register()

    def _close_socket(self, linger: int = 0) -> None:
        sock, self._sock = self._sock, None
        self._io = None
        if sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        sock.close(linger)

    def _send_register(self) -> None:
        now = self._last_register = time.monotonic()
        credit = 2 * self.concurrency if self._sink is not None else 0
        self.core.register(list(self.announced), list(self.patterns), credit, now)
        self._flush()

    async def _ticker(self) -> None:
        hb = P.frames(FrameKind.HEARTBEAT)
        core = self.core
        while True:
            await asyncio.sleep(core.heartbeat)  # ours, or the broker's bound on it
            now = time.monotonic()
            if self._sock is None:
                continue
            if now - core.last_heard > 3 * core.heartbeat:
                log.info(
                    "%s: broker silent for %.2f s; reconnecting", self.name, now - core.last_heard
                )
                self._registered.clear()
                core.lost_connection()
                self._close_socket()
                self._open()
                continue
            if not core.registered:
                if now - self._last_register > min(1.0, 2 * core.heartbeat):
                    self._send_register()
            else:
                core.out.other.append(list(hb))
            self._flush()
            self._drain()

    # -- input -----------------------------------------------------------------------

    def _drain(self) -> None:
        io = self._io
        if io is None:
            return
        try:
            # The FD woke us (usually for a message): take everything waiting in one call.
            msgs = io.recv_many(4096)
        except zmq.ZMQError:  # the socket was closed under us
            return
        if msgs:
            now = time.monotonic()
            # PERF: replies and acks that handling these produces leave in the flush below,
            # not in a call_soon'd one (a loop iteration per delivery on a node).
            scheduled, self._flush_scheduled = self._flush_scheduled, True
            receive = self.core.receive
            try:
                for msg in msgs:
                    try:
                        events = receive(msg, now)
                    except (ProtocolError, DecodeError) as exc:
                        self.stats["malformed"] += 1
                        log.warning("%s: dropped malformed message from broker: %s", self.name, exc)
                        continue
                    for event in events:
                        try:
                            self._on_event(event)
                        except Exception:  # a bug here must not drop the rest of the batch
                            log.exception(
                                "%s: failed to handle a message from the broker", self.name
                            )
            finally:
                self._flush_scheduled = scheduled
            if len(msgs) == 4096:
                assert self._loop is not None
                self._loop.call_soon(self._drain)
        if self.core.out:
            self._flush()  # re-checks readability after its sends
        elif msgs:
            # A handler may have sent directly (REGISTER after DISCONNECT): a send can take
            # ZeroMQ's edge-triggered wake-up, so look once more instead of waiting.
            self._check_readable()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Replied):
            self._on_reply(event.env)
        elif isinstance(event, Delivered):
            self._on_deliver(event.env, event.tell)
        elif isinstance(event, Accepted):
            self._on_ack(event.ids)
        elif isinstance(event, Refused):
            self._on_refused(event)
        elif isinstance(event, Cancelled):
            self._on_cancel(event)
        elif isinstance(event, Welcomed):
            self._registered.set()
            self._window_free.set()
        elif isinstance(event, Disconnected):
            self._on_disconnect(event)

    def _on_disconnect(self, event: Disconnected) -> None:
        self._registered.clear()
        if event.fatal is not None:
            self._fatal = event.fatal
            log.error("%s: %s", self.name, event.fatal)
            self._registered.set()  # wake start() so it raises
            self._window_free.set()
        elif event.code == DisconnectCode.UNKNOWN_PEER:
            self._send_register()
        elif event.code == DisconnectCode.RETRY:
            log.info("%s: registration deferred: %s", self.name, event.reason)

    # -- client side -----------------------------------------------------------------

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.core.max_frame - 64:  # room for the header and routing frames
            raise EncodeError(
                f"envelope of {len(data)} bytes exceeds the broker's limit of "
                f"{self.core.max_frame} bytes per message"
            )

    def _check_open(self) -> None:
        assert self._loop is not None, "start() the peer first"
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise UndeliverableError("mesh peer closed")

    def _submitted(self, went: bool) -> None:
        """After core.submit: PERF: the only message in flight leaves now (latency); with
        more in flight, they batch in the next flush."""
        if went and len(self.core.unacked) == 1 and not self._flush_scheduled:
            self._flush()
        else:
            self._schedule_flush()

    async def request(self, envelope: Envelope, timeout: float | None = None) -> Envelope:
        """Send a SEND envelope; return its REPLY or ERROR envelope."""
        self._check_open()
        assert self._loop is not None
        data = self.core.codec.encode(envelope)
        self._check_size(data)
        fut: asyncio.Future[Envelope] = self._loop.create_future()
        mid = envelope.id
        self._requests[mid] = fut
        try:
            self._submitted(self.core.submit(mid, data, request=True))
            return await asyncio.wait_for(fut, timeout) if timeout else await fut
        finally:
            self._requests.pop(mid, None)
            self.core.forget(mid)

    async def send(
        self,
        message: Any,
        *,
        to: AgentId,
        timeout: float | None = None,
        reply_type: Any = None,
        traceparent: str | None = None,
    ) -> Any:
        """Request/reply to an agent on any node; returns the decoded reply message.

        ``to.key == "*"`` lets the broker pick any instance of the type. A handler error
        raises :class:`RemoteError`; no route raises :class:`UndeliverableError`.
        ``traceparent`` defaults to the innermost ``Tracer.span`` open here.
        """
        env = Envelope(
            self.ids.next(),
            Kind.SEND,
            recipient=to,
            deadline=time.time() + timeout if timeout else 0.0,
            traceparent=current_traceparent() if traceparent is None else traceparent,
            payload_type=wire_name(type(message)),
            payload=encode_payload(message),
        )
        return decode_reply(await self.request(env, timeout), reply_type)

    async def publish(self, message: Any, topic: TopicId | str) -> None:
        """Publish to a topic; returns once the broker has handed it to every subscriber."""
        if isinstance(topic, str):
            topic = TopicId(topic)
        await self.submit(self._envelope(message, topic=topic))

    async def tell(self, message: Any, *, to: AgentId) -> None:
        """One-way to one agent (no reply); returns once the broker handed it to a node."""
        await self.submit(self._envelope(message, recipient=to))

    def _envelope(
        self,
        message: Any,
        *,
        recipient: AgentId | None = None,
        topic: TopicId | None = None,
        traceparent: str | None = None,
    ) -> Envelope:
        return Envelope(
            self.ids.next(),
            Kind.PUBLISH,
            recipient=recipient,
            topic=topic,
            traceparent=current_traceparent() if traceparent is None else traceparent,
            payload_type=wire_name(type(message)),
            payload=encode_payload(message),
        )

    async def tell_many(self, messages: Sequence[Any], *, to: AgentId) -> int:
        """Batch one-way: queue every message (the window and a backlog pace them).

        Returns once the broker has accepted (handed on) all of them; the count accepted.
        """
        self._check_open()
        encode, core = self.core.codec.encode, self.core
        traceparent = current_traceparent()
        n = 0
        for message in messages:
            env = self._envelope(message, recipient=to, traceparent=traceparent)
            core.submit(env.id, encode(env))
            n += 1
        self._schedule_flush()
        while core.unacked or core.backlog:
            self._window_free.clear()
            await self._window_free.wait()
            if self._fatal is not None:
                raise self._fatal
        return n

    async def submit(self, envelope: Envelope) -> None:
        """Submit any envelope; returns once the broker handed it on (its ACK).

        A SEND is settled by its REPLY instead (the broker never ACKs a SEND): this awaits
        the reply and discards it — use :meth:`request` to see it.
        """
        if envelope.kind is Kind.SEND:
            await self.request(envelope)
            return
        self._check_open()
        assert self._loop is not None
        data = self.core.codec.encode(envelope)
        self._check_size(data)
        fut: asyncio.Future[None] = self._loop.create_future()
        self._publishes[envelope.id] = fut
        try:
            self._submitted(self.core.submit(envelope.id, data))
            await fut
        finally:
            self._publishes.pop(envelope.id, None)
            self.core.forget(envelope.id)

    def _on_reply(self, env: Envelope) -> None:
        corr = env.correlation
        fut = self._requests.get(corr) if corr is not None else None
        if fut is not None:
            if not fut.done():
                fut.set_result(env)
        elif self._sink is not None:
            self._sink.deliver(env)
        self._freed()

    def _on_ack(self, ids: list[MessageId]) -> None:
        pubs = self._publishes
        for mid in ids:
            fut = pubs.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._freed()

    def _freed(self) -> None:
        """Room in the window: move the backlog in, wake who waits for room."""
        if self.core.backlog and self.core.pump():
            self._schedule_flush()
        self._window_free.set()

    def _on_refused(self, event: Refused) -> None:
        mid, err = event.mid, event.error
        if err is None:  # BUSY: submit again after the broker's hint
            assert self._loop is not None and event.data is not None
            self._loop.call_later(event.retry_ms / 1000.0, self._resubmit, mid, event.data)
            return
        fut = self._requests.get(mid)
        if fut is not None and not fut.done():
            fut.set_exception(err)
        pub = self._publishes.get(mid)
        if pub is not None and not pub.done():
            pub.set_exception(err)
        if fut is None and pub is None and self._sink is not None and event.data is not None:
            self._sink.deliver(
                Envelope(
                    self.ids.next(),
                    Kind.ERROR,
                    correlation=mid,
                    payload_type="ErrorInfo",
                    payload=msgspec.Raw(msgspec.msgpack.encode(error_info(err))),
                )
            )
        self._freed()

    def _resubmit(self, mid: MessageId, data: bytes) -> None:
        core = self.core
        if mid in self._requests or mid in self._publishes or mid in core.requests or self._sink:
            core.submit(mid, data)
            self._schedule_flush()

    # -- serving a runtime -----------------------------------------------------------

    def post(self, envelope: Envelope) -> None:
        """Queue an envelope without waiting (the attached runtime's outbound traffic).

        REPLY/ERROR answer a delivery this peer received (cached for idempotency);
        SEND/PUBLISH/CANCEL are submitted within the window, the rest wait in a backlog.
        """
        kind = envelope.kind
        if kind is Kind.REPLY or kind is Kind.ERROR:
            self._answer(envelope)
            return
        data = self.core.codec.encode(envelope)
        self._check_size(data)
        self._submitted(self.core.submit(envelope.id, data, request=kind is Kind.SEND))

    def reregister(self) -> None:
        """Send REGISTER again (announced types or subscriptions changed)."""
        if self._sock is not None:
            self._send_register()

    # -- output ----------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        io = self._io
        if io is None:
            return
        msgs = self.core.take_output()
        for i, frames in enumerate(msgs):
            if not self._send(io, frames):
                self.core.requeue(msgs[i:])  # retried by the next flush or tick
                break
        self._check_readable()

    def _check_readable(self) -> None:
        """After a send: drain if a message waits (a send may consume the FD's edge)."""
        io = self._io
        if io is not None and io.readable():
            assert self._loop is not None
            self._loop.call_soon(self._drain)

    def _send(self, io: FrameIO, frames: list[bytes]) -> bool:
        try:
            return io.send(frames)
        except zmq.Again:  # refused after the first part: not sent, the caller re-queues
            return False
