"""An asyncio mesh peer: one DEALER socket that submits work, hosts agents, or both.

I/O is batched: the socket's file descriptor wakes the loop, which then drains every
waiting message with NOBLOCK; everything a loop iteration produces (submissions, replies,
acks) leaves as one multipart message per kind, flushed once via ``call_soon``. No
per-message awaits touch ZeroMQ.

:class:`engine.mesh.MeshClient` and :class:`engine.mesh.Node` are this class with other
defaults; ``Runtime(mesh=...)`` uses it with the runtime as host.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

import msgspec
import zmq

from engine.errors import (
    DecodeError,
    EncodeError,
    EngineError,
    ProtocolError,
    RemoteError,
    TraceContextError,
    UndeliverableError,
)
from engine.mesh import protocol as P
from engine.mesh._io import FrameIO, frame_socket
from engine.mesh._outbox import Outbox
from engine.mesh.protocol import DisconnectCode, FrameKind, NackCode, NackItem, Role
from engine.mesh.security import CurveClient
from engine.messages import (
    AgentId,
    Codec,
    Envelope,
    ErrorInfo,
    Kind,
    MessageId,
    MessageIds,
    TopicId,
    decode_payload,
    encode_payload,
    message_class,
    wire_name,
)
from engine.observe.tracing import Tracer, current_traceparent, parse_traceparent

__all__ = ["Host", "MeshPeer", "Sink", "decode_reply"]

log = logging.getLogger("engine.mesh.peer")

_FINAL_NACKS = {
    NackCode.UNROUTABLE: "unroutable",
    NackCode.DEAD_LETTERED: "dead-lettered",
    NackCode.FORBIDDEN: "forbidden",
    NackCode.EXPIRED: "expired",
}


class Host(Protocol):
    """What a peer needs from whatever runs its agents (AgentHost, or a Runtime)."""

    @property
    def types(self) -> Sequence[str]: ...

    @property
    def subscriptions(self) -> Sequence[str]: ...

    async def handle(self, envelope: Envelope) -> Envelope | None:
        """Run one delivered envelope; return the REPLY/ERROR envelope for a SEND."""
        ...


class Sink(Protocol):
    """Where a transport-mode peer hands inbound envelopes (the runtime's TransportHost)."""

    @property
    def origin(self) -> str: ...

    def deliver(self, envelope: Envelope) -> None: ...


class MeshPeer:
    """A peer of the mesh. ``await start()`` connects and registers; ``await close()`` leaves.

    As a client: :meth:`send` (request/reply), :meth:`publish`, :meth:`request` (raw
    envelopes). As a node: pass ``host``; deliveries run on it with at most
    ``concurrency`` at a time, and the broker never has more than ``2 * concurrency``
    outstanding here. A delivery already executed here (same envelope id) is answered
    from a bounded cache instead of running again.
    """

    def __init__(
        self,
        connect: str,
        *,
        name: str | None = None,
        role: Role | str = Role.ORCHESTRATOR,
        host: Host | None = None,
        concurrency: int = 64,
        heartbeat: float = 0.5,
        curve: CurveClient | None = None,
        hmac_key: bytes | None = None,
        max_frame: int = P.MAX_FRAME,
        idempotency_cache: int = 100_000,
        tracer: Tracer | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.connect = connect
        self.name = name or f"peer-{os.urandom(4).hex()}"
        self.role = Role(role)
        self.host = host
        self.concurrency = concurrency
        self.heartbeat = heartbeat
        self.curve = curve
        self.hmac_key = hmac_key
        self.tracer = tracer  # opens a "handler" span around each hosted delivery
        self.ids = MessageIds()
        self.broker_id: str | None = None
        self.stats: dict[str, int] = dict.fromkeys(
            ("executed", "duplicates", "replies", "resent", "reconnects", "malformed"), 0
        )
        self._codec = Codec(max_frame)
        self._max_frame = max_frame
        self._sock: zmq.Socket[Any] | None = None
        self._io: FrameIO | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out = Outbox()
        self._flush_scheduled = False
        self._registered = asyncio.Event()
        self._last_heard = 0.0
        self._last_register = 0.0
        self._tick_task: asyncio.Task[None] | None = None
        self._fatal: EngineError | None = None
        self._closing = False
        self._forgotten = False
        # client side
        self._window = 0
        self._window_free = asyncio.Event()
        self._unacked: dict[MessageId, bytes] = {}
        self._requests: dict[MessageId, tuple[bytes, asyncio.Future[Envelope]]] = {}
        self._publishes: dict[MessageId, asyncio.Future[None]] = {}
        # node side
        self._free_slots = concurrency  # of ``concurrency`` running deliveries
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._running: set[MessageId] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving: dict[MessageId, asyncio.Task[None]] = {}
        self._eager = bool(getattr(host, "eager", False))
        self._done: OrderedDict[MessageId, bytes | None] = OrderedDict()
        self._cache_size = idempotency_cache
        # transport mode (Runtime(mesh=...)): inbound envelopes go to a sink
        self._sink: Sink | None = None
        self._backlog: deque[tuple[MessageId, bytes]] = deque()
        self.announced: dict[str, None] = {}
        self.patterns: dict[str, None] = {}

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:
        """Connect and register; raises ``TimeoutError`` if no broker answers in time."""
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
        """Leave the mesh: finish running deliveries (when graceful), then DISCONNECT."""
        if self._closing:
            return
        self._closing = True
        if graceful and self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        if self._sock is not None:
            if graceful:
                self._flush()
                self._send(
                    P.frames(
                        FrameKind.DISCONNECT,
                        P.encode(P.Disconnect(DisconnectCode.LEAVING, "closing")),
                    )
                )
            self._close_socket(linger=200 if graceful else 0)
        err = UndeliverableError("mesh peer closed")
        for _, fut in self._requests.values():
            if not fut.done():
                fut.set_exception(err)
        for pfut in self._publishes.values():
            if not pfut.done():
                pfut.set_exception(err)
        self._requests.clear()
        self._publishes.clear()

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
        self._last_heard = time.monotonic()
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
        self._last_register = time.monotonic()
        host = self.host
        types = list(host.types) if host else list(self.announced)
        subs = list(host.subscriptions) if host else list(self.patterns)
        serving = host is not None or self._sink is not None
        reg = P.Register(
            name=self.name,
            role=self.role,
            types=types,
            subscriptions=subs,
            origins=[self.ids.origin],
            credit=2 * self.concurrency if serving else 0,
            heartbeat_ms=int(self.heartbeat * 1000),
        )
        self._send(P.frames(FrameKind.REGISTER, P.encode(reg)))

    async def _ticker(self) -> None:
        hb = P.frames(FrameKind.HEARTBEAT)
        while True:
            await asyncio.sleep(self.heartbeat)
            now = time.monotonic()
            if self._sock is None:
                continue
            if now - self._last_heard > 3 * self.heartbeat:
                log.info(
                    "%s: broker silent for %.2f s; reconnecting", self.name, now - self._last_heard
                )
                self.stats["reconnects"] += 1
                self._registered.clear()
                self._forgotten = True
                self._close_socket()
                self._open()
                continue
            if not self._registered.is_set() and now - self._last_register > 1.0:
                self._send_register()
            self._send(list(hb))
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
            self._last_heard = time.monotonic()
            # PERF: replies and acks that handling these produces leave in the flush below,
            # not in a call_soon'd one (a loop iteration per delivery on a node).
            scheduled, self._flush_scheduled = self._flush_scheduled, True
            try:
                for msg in msgs:
                    try:
                        self._on_message(msg)
                    except (ProtocolError, DecodeError) as exc:
                        self.stats["malformed"] += 1
                        log.warning("%s: dropped malformed message from broker: %s", self.name, exc)
                    except Exception:  # a bug here must not drop the rest of the batch
                        log.exception("%s: failed to handle a message from the broker", self.name)
            finally:
                self._flush_scheduled = scheduled
            if len(msgs) == 4096:
                assert self._loop is not None
                self._loop.call_soon(self._drain)
        if self._out:
            self._flush()  # re-checks readability after its sends
        elif msgs:
            # A handler may have sent directly (REGISTER after DISCONNECT): a send can take
            # ZeroMQ's edge-triggered wake-up, so look once more instead of waiting for
            # the ticker.
            self._check_readable()

    def _on_message(self, msg: list[bytes]) -> None:
        kind, bodies = P.parse(msg, self.hmac_key)
        if kind is FrameKind.DELIVER:
            self._on_deliver(bodies)
        elif kind is FrameKind.REPLY:
            self._on_reply(bodies)
        elif kind is FrameKind.ACK:
            self._on_ack(P.decode_ids(bodies))
        elif kind is FrameKind.NACK:
            self._on_nack(P.decode_nacks(bodies))
        elif kind is FrameKind.REGISTER:
            self._on_welcome(P.decode_welcome(bodies))
        elif kind is FrameKind.DISCONNECT:
            self._on_disconnect(P.decode_disconnect(bodies))

    def _check_size(self, data: bytes) -> None:
        if len(data) > self._max_frame - 64:  # room for the header and routing frames
            raise EncodeError(
                f"envelope of {len(data)} bytes exceeds the broker's limit of "
                f"{self._max_frame} bytes per message"
            )

    def _on_welcome(self, welcome: P.Welcome) -> None:
        previous, self.broker_id = self.broker_id, welcome.broker
        self._max_frame = welcome.max_frame
        self._window = welcome.credit
        self._registered.set()
        self._window_free.set()
        if self._backlog:
            self._pump()
        forgotten, self._forgotten = self._forgotten, False
        if previous is not None and (forgotten or previous != welcome.broker):
            # Re-registered (broker restarted, or it forgot us): resend everything unanswered.
            pending = list(self._unacked.values())
            pending += [
                data for mid, (data, _) in self._requests.items() if mid not in self._unacked
            ]
            if pending:
                log.info("%s: re-registered; resending %d messages", self.name, len(pending))
                self.stats["resent"] += len(pending)
                self._out.deliver.extend(pending)

    def _on_disconnect(self, msg: P.Disconnect) -> None:
        code = msg.code
        if code in (DisconnectCode.UNKNOWN_PEER, DisconnectCode.SHUTDOWN):
            self._registered.clear()
            self._forgotten = True
            if code == DisconnectCode.UNKNOWN_PEER:
                self._send_register()
            return
        self._fatal = EngineError(f"broker refused this peer: {msg.reason}")
        log.error("%s: %s", self.name, self._fatal)
        self._registered.set()  # wake start() so it raises

    # -- client side -----------------------------------------------------------------

    async def _submit(self, data: bytes, mid: MessageId) -> None:
        if self._fatal is not None:
            raise self._fatal
        self._check_size(data)
        while len(self._unacked) >= self._window or not self._registered.is_set():
            self._window_free.clear()
            await self._window_free.wait()
            if self._fatal is not None:
                raise self._fatal
        self._unacked[mid] = data
        self._out.deliver.append(data)
        self._schedule_flush()

    async def request(self, envelope: Envelope, timeout: float | None = None) -> Envelope:
        """Send a SEND envelope; return its REPLY or ERROR envelope."""
        assert self._loop is not None, "start() the peer first"
        data = self._codec.encode(envelope)
        fut: asyncio.Future[Envelope] = self._loop.create_future()
        mid = envelope.id
        self._requests[mid] = (data, fut)
        try:
            unacked = self._unacked
            if (
                len(unacked) < self._window
                and self._registered.is_set()
                and self._fatal is None
                and len(data) <= self._max_frame - 64
            ):
                unacked[mid] = data  # fast path of _submit: room in the window
                if len(self._requests) == 1 and not self._flush_scheduled and not self._out:
                    # PERF: the only request in flight leaves now rather than in a
                    # call_soon'd flush; with more in flight, they batch (benches/bench_mesh.py).
                    self._send_now(FrameKind.DELIVER, data)
                else:
                    self._out.deliver.append(data)
                    self._schedule_flush()
            else:
                await self._submit(data, mid)
            return await asyncio.wait_for(fut, timeout) if timeout else await fut
        finally:
            self._requests.pop(mid, None)
            self._unacked.pop(mid, None)

    async def send(
        self,
        message: Any,
        to: AgentId,
        *,
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
        env = Envelope(
            self.ids.next(),
            Kind.PUBLISH,
            topic=topic,
            traceparent=current_traceparent(),
            payload_type=wire_name(type(message)),
            payload=encode_payload(message),
        )
        await self.submit(env)

    async def tell(self, message: Any, to: AgentId) -> None:
        """One-way to one agent (no reply); returns once the broker handed it to a node."""
        env = Envelope(
            self.ids.next(),
            Kind.PUBLISH,
            recipient=to,
            traceparent=current_traceparent(),
            payload_type=wire_name(type(message)),
            payload=encode_payload(message),
        )
        await self.submit(env)

    async def tell_many(self, messages: Sequence[Any], to: AgentId) -> int:
        """Batch one-way: queue every message, awaiting only when the window is full.

        Returns once the broker has accepted (handed on) all of them; the count accepted.
        """
        assert self._loop is not None, "start() the peer first"
        ids, encode, unacked = self.ids, self._codec.encode, self._unacked
        traceparent = current_traceparent()
        pending: list[MessageId] = []
        for message in messages:
            env = Envelope(
                ids.next(),
                Kind.PUBLISH,
                recipient=to,
                traceparent=traceparent,
                payload_type=wire_name(type(message)),
                payload=encode_payload(message),
            )
            if len(unacked) >= self._window or not self._registered.is_set():
                await self._submit(encode(env), env.id)
            else:
                data = encode(env)
                unacked[env.id] = data
                self._out.deliver.append(data)
                self._schedule_flush()
            pending.append(env.id)
        while unacked:
            self._window_free.clear()
            await self._window_free.wait()
            if self._fatal is not None:
                raise self._fatal
        return len(pending)

    async def submit(self, envelope: Envelope) -> None:
        """Submit any envelope; returns once the broker handed it on (its ACK).

        A SEND is settled by its REPLY instead (the broker never ACKs a SEND): this awaits
        the reply and discards it — use :meth:`request` to see it.
        """
        assert self._loop is not None, "start() the peer first"
        if envelope.kind is Kind.SEND:
            await self.request(envelope)
            return
        data = self._codec.encode(envelope)
        fut: asyncio.Future[None] = self._loop.create_future()
        self._publishes[envelope.id] = fut
        try:
            await self._submit(data, envelope.id)
            await fut
        finally:
            self._publishes.pop(envelope.id, None)
            self._unacked.pop(envelope.id, None)

    def _on_ack(self, ids: list[MessageId]) -> None:
        unacked, pubs = self._unacked, self._publishes
        for mid in ids:
            unacked.pop(mid, None)
            fut = pubs.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        if len(unacked) < self._window:
            self._window_free.set()
        if self._backlog:
            self._pump()

    def _on_nack(self, items: list[NackItem]) -> None:
        for item in items:
            mid = item.id
            data = self._unacked.pop(mid, None)
            if item.code == NackCode.BUSY and data is not None:
                assert self._loop is not None
                self._loop.call_later(0.05, self._resubmit, mid, data)
                continue
            label = (
                _FINAL_NACKS.get(NackCode(item.code), "refused")
                if item.code in NackCode._value2member_map_
                else "refused"
            )
            err = UndeliverableError(f"{label}: {item.reason}")
            req = self._requests.get(mid)
            if req is not None and not req[1].done():
                req[1].set_exception(err)
            pub = self._publishes.get(mid)
            if pub is not None and not pub.done():
                pub.set_exception(err)
            if req is None and pub is None and self._sink is not None and data is not None:
                self._sink.deliver(
                    Envelope(
                        self.ids.next(),
                        Kind.ERROR,
                        correlation=mid,
                        payload_type="ErrorInfo",
                        payload=msgspec.Raw(
                            msgspec.msgpack.encode(ErrorInfo(UndeliverableError.__name__, str(err)))
                        ),
                    )
                )
        self._window_free.set()
        if self._backlog:
            self._pump()

    def _resubmit(self, mid: MessageId, data: bytes) -> None:
        if mid in self._requests or mid in self._publishes:
            self._unacked[mid] = data
            self._out.deliver.append(data)
            self._schedule_flush()

    def _on_reply(self, bodies: list[bytes]) -> None:
        decode, requests = self._codec.decode, self._requests
        for body in bodies:
            env = decode(body)
            corr = env.correlation
            if corr is None:
                raise ProtocolError("REPLY envelope without correlation")
            if self._unacked.pop(corr, None) is None and self._sink is not None:
                continue  # a duplicate reply (after a resend): the sink already has one
            req = requests.get(corr)
            if req is not None:
                if not req[1].done():
                    self.stats["replies"] += 1
                    req[1].set_result(env)
            elif self._sink is not None:
                self.stats["replies"] += 1
                self._sink.deliver(env)
        self._window_free.set()
        if self._backlog:
            self._pump()

    # -- transport mode --------------------------------------------------------------

    def attach(self, sink: Sink) -> None:
        """Hand every inbound envelope to ``sink.deliver`` (a Runtime), before start()."""
        self._sink = sink
        self.ids = MessageIds(sink.origin)

    def post(self, envelope: Envelope) -> None:
        """Queue an envelope without waiting (transport mode).

        REPLY/ERROR answer a delivery this peer received (cached for idempotency);
        SEND/PUBLISH/CANCEL are submitted within the window, the rest wait in a backlog.
        """
        data = self._codec.encode(envelope)
        if envelope.kind is Kind.REPLY or envelope.kind is Kind.ERROR:
            corr = envelope.correlation
            if corr is not None:
                self._running.discard(corr)
                self._remember(corr, data)
            self._out.reply.append(data)
            if self._running or self._flush_scheduled:
                self._schedule_flush()
            else:
                self._flush()  # PERF: the last running delivery answers at once (as _execute)
            return
        self._check_size(data)
        self._backlog.append((envelope.id, data))
        self._pump(alone=True)

    def _pump(self, alone: bool = False) -> None:
        """Move backlog into the window; ``alone``: a new submission leaves at once when it
        is the only one in flight (PERF: as :meth:`request`), else with the next flush."""
        backlog, unacked = self._backlog, self._unacked
        if not self._registered.is_set():
            return
        while backlog and len(unacked) < self._window:
            mid, data = backlog.popleft()
            unacked[mid] = data
            self._out.deliver.append(data)
        if alone and len(unacked) == 1 and not self._flush_scheduled:
            self._flush()
        else:
            self._schedule_flush()

    def reregister(self) -> None:
        """Send REGISTER again (announced types or subscriptions changed)."""
        if self._sock is not None:
            self._send_register()

    def _remember(self, mid: MessageId, data: bytes | None) -> None:
        done = self._done
        done[mid] = data
        if len(done) > self._cache_size:
            done.popitem(last=False)

    # -- node side -------------------------------------------------------------------

    def _on_deliver(self, bodies: list[bytes]) -> None:
        host = self.host
        decode = self._codec.decode
        for body in bodies:
            try:
                env = decode(body)
            except DecodeError as exc:
                self.stats["malformed"] += 1
                log.warning("%s: undecodable delivery dropped: %s", self.name, exc)
                continue
            mid = env.id
            if env.kind is Kind.CANCEL:
                self._on_cancel(env)
                continue
            if mid in self._done:
                self.stats["duplicates"] += 1
                cached = self._done[mid]
                if cached is None:
                    self._out.acks.append(mid)
                else:
                    self._out.reply.append(cached)
                continue
            if mid in self._running:
                self.stats["duplicates"] += 1
                continue
            sink = self._sink
            if sink is not None and not self._closing:
                self.stats["executed"] += 1
                if env.kind is Kind.SEND:
                    self._running.add(mid)  # answered by post(REPLY/ERROR)
                    sink.deliver(env)
                else:
                    sink.deliver(env)
                    self._remember(mid, None)
                    self._out.acks.append(mid)
                continue
            if host is None or self._closing:
                self._out.nacks.append(NackItem(mid, NackCode.REJECTED, "not hosting agents"))
                continue
            self._running.add(mid)
            task = self._start(self._execute(host, env), mid)
            if task is not None:
                self._serving[mid] = task
        self._schedule_flush()

    def _start(self, coro: Coroutine[Any, Any, None], mid: MessageId) -> asyncio.Task[None] | None:
        """Run ``coro`` eagerly: most handlers finish without suspending, so no task.

        PERF: skipping create_task for handlers that return at once saves a task and a
        loop iteration per delivery (benches/bench_mesh.py sequential round trip).
        Python 3.12's eager task factory does the same; this is its 3.11 equivalent.
        """
        assert self._loop is not None
        if not self._eager:  # the host needs a current task (asyncio.timeout and friends)
            task = self._loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._served, mid))
            return task
        # The first step runs in a copy of the loop's context, and the task resuming it
        # keeps that copy: context variables a handler sets (the current span, log
        # context) stay with that handler instead of leaking into the receive loop.
        ctx = contextvars.copy_context()
        try:
            yielded = ctx.run(coro.send, None)
        except StopIteration:
            return None
        except BaseException:
            log.exception("%s: delivery failed", self.name)
            return None
        assert self._loop is not None
        task = self._loop.create_task(_resume(coro, yielded), context=ctx)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._served, mid))
        return task

    def _served(self, mid: MessageId, task: asyncio.Task[None]) -> None:
        """One done callback per delivery task (PERF: each callback is a call_soon)."""
        self._tasks.discard(task)
        self._serving.pop(mid, None)

    def _on_cancel(self, env: Envelope) -> None:
        """Stop the request ``env.correlation`` if it runs here (never acked: untracked)."""
        target = env.correlation or env.id
        if self._sink is not None:
            self._sink.deliver(env)
            return
        task = self._serving.get(target)
        if task is not None:
            task.cancel()

    async def _execute(self, host: Host, env: Envelope) -> None:
        slot = False
        try:
            # Inside the try: a CANCEL while waiting for a slot is answered like one while
            # running (else the id stays in _running and the broker's credit leaks).
            if self._free_slots > 0:
                self._free_slots -= 1
            else:
                await self._wait_slot()
            slot = True
            if self.tracer is None:
                reply = await host.handle(env)
            else:
                reply = await self._traced(host, env, self.tracer)
        except asyncio.CancelledError:
            if self._closing:
                raise  # unanswered: the broker redelivers it elsewhere
            # cancelled by the requester's CANCEL: settle the delivery with an ERROR
            reply = error_reply(
                env, asyncio.CancelledError("cancelled by the sender"), self.ids.next()
            )
        except Exception as exc:  # the host failed, not the handler: report as ERROR
            reply = error_reply(env, exc, self.ids.next())
        finally:
            if slot:
                self._release_slot()
        self.stats["executed"] += 1
        mid = env.id
        self._running.discard(mid)
        data: bytes | None = None
        if env.kind is Kind.SEND and reply is not None:
            data = self._codec.encode(reply)
            if len(data) > self._max_frame - 64:
                too_big = EncodeError(f"reply of {len(data)} bytes exceeds the broker's limit")
                data = self._codec.encode(error_reply(env, too_big, self.ids.next()))
            self._out.reply.append(data)
        else:
            self._out.acks.append(mid)
        self._remember(mid, data)
        if self._running or self._flush_scheduled:
            self._schedule_flush()  # batched with what the others produce (or the drain's)
        else:
            # PERF: the last running delivery answers at once rather than in a call_soon'd
            # flush: one loop iteration less per request on a node (benches/bench_mesh.py).
            self._flush()

    # PERF: at most ``concurrency`` deliveries run; a free slot is taken without
    # asyncio.Semaphore's coroutine calls (~1.5 us per delivery, benches/mesh_seq_profile.py).
    async def _wait_slot(self) -> None:
        """Wait (FIFO) until a running delivery hands its slot over."""
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._slot_waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot, then cancelled: pass it on
                self._release_slot()
            raise

    def _release_slot(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot goes straight to the next waiter
                return
        self._free_slots += 1

    async def _traced(self, host: Host, env: Envelope, tracer: Tracer) -> Envelope | None:
        """``host.handle(env)`` in a ``handler`` span continuing the envelope's trace.

        The handler sees the span's traceparent (``ctx.envelope`` / ``ctx.traceparent``
        and ``current_traceparent()``), so what it sends is parented on this span.
        """
        target = env.recipient or env.topic
        attrs: dict[str, str | int] = {
            "engine.node": self.name,
            "engine.message_type": env.payload_type,
            "engine.attempt": env.attempt,
        }
        if target is not None:
            attrs["engine.target"] = str(target)
        try:
            parent = env.traceparent or None
            if parent is not None:
                parse_traceparent(parent)
        except TraceContextError:
            log.warning("%s: bad traceparent %r: starting a new trace", self.name, parent)
            parent = None
        with tracer.span(
            f"handle {env.payload_type}", parent, kind="handler", attributes=attrs
        ) as span:
            return await host.handle(msgspec.structs.replace(env, traceparent=span.traceparent))

    # -- output ----------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out or self._io is None:
            return
        self._out = Outbox()
        msgs = out.messages()
        for i, frames in enumerate(msgs):
            if not self._send(frames):
                self._out.other.extend(msgs[i:])  # retried by the next tick
                break
        self._check_readable()

    def _send_now(self, kind: FrameKind, body: bytes) -> None:
        """Send one body at once (queued for the next flush if it cannot go now)."""
        if self._send(P.frames(kind, body)):
            self._check_readable()
        else:
            if kind is FrameKind.DELIVER:
                self._out.deliver.append(body)
            else:
                self._out.reply.append(body)
            self._schedule_flush()

    def _check_readable(self) -> None:
        """After a send: drain if a message waits (a send may consume the FD's edge)."""
        io = self._io
        if io is not None and io.readable():
            assert self._loop is not None
            self._loop.call_soon(self._drain)

    def _send(self, frames: list[bytes]) -> bool:
        io = self._io
        if io is None:
            return False
        if self.hmac_key is not None:
            P.sign(frames, self.hmac_key)
        try:
            if io.send(frames):
                return True
        except zmq.Again:  # refused after the first part: not sent, the caller re-queues
            pass
        if self.hmac_key is not None:  # unsign: it will be signed again on retry
            P.unsign(frames)
        return False


async def _resume(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
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


def decode_reply(env: Envelope, reply_type: Any = None) -> Any:
    """The message inside a REPLY envelope; raises :class:`RemoteError` for an ERROR one."""
    if env.kind is Kind.ERROR:
        try:
            info = decode_payload(env.payload, ErrorInfo)
        except DecodeError:
            raise RemoteError("UnknownError", "undecodable error reply") from None
        raise RemoteError(info.type_name, info.message)
    if reply_type is None:
        if env.payload_type == "" or env.payload == b"\xc0" or not bytes(env.payload):
            return None
        reply_type = message_class(env.payload_type)  # MessageTypeConflict if ambiguous
        if reply_type is None:
            return env.payload
    return decode_payload(env.payload, reply_type)
