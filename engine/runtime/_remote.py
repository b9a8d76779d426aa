"""The runtime's side of its transport: outbound requests, inbound envelopes.

:class:`Remote` keeps the requests waiting for a remote reply (keyed by sequence number:
the correlation id of the reply) and the local handlers serving remote requests (keyed
by the request id, so a CANCEL envelope can stop them). :meth:`Remote.deliver` is the one
entry point of an inbound envelope, in process (``LoopbackHub``) and on a mesh node alike:
a SEND or PUBLISH runs eagerly (:mod:`._eager`: no task unless its handler suspends) and
is always answered through the transport: a REPLY or ERROR for a SEND (an ERROR saying so
when the sender cancelled it), an empty REPLY for a PUBLISH (the mesh settles the
delivery on it). A transport with a ``tracer`` (an :class:`engine.observe.Tracer`) gets a
``handle <type>`` span around each delivery, named after its ``name``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from engine.errors import DeadlineExceeded, EngineError, UndeliverableError
from engine.messages import (
    AgentId,
    Envelope,
    ErrorInfo,
    Kind,
    Message,
    MessageId,
    TopicId,
    decode_payload,
    encode_payload,
    wire_name,
)
from engine.runtime._books import Books
from engine.runtime._eager import start_eager
from engine.runtime._transport import Transport
from engine.runtime._wire import MessageTypes, error_from_info, error_info

if TYPE_CHECKING:
    from engine.observe.metrics import Metrics
    from engine.observe.tracing import Tracer

__all__ = ["Local", "Remote"]

log = logging.getLogger("engine.runtime")
_NIL = encode_payload(None)
#: One request in this many through the transport has its round trip timed (with metrics).
LATENCY_SAMPLE = 16


class Local(Protocol):
    """What :class:`Remote` needs of its runtime: local delivery, by public methods."""

    @property
    def origin(self) -> str: ...

    @property
    def metrics(self) -> Metrics | None: ...

    async def send(
        self,
        message: Any,
        *,
        to: AgentId,
        timeout: float | None = ...,
        sender: AgentId | None = ...,
        traceparent: str = ...,
    ) -> Any: ...

    async def publish(
        self,
        message: Any,
        *,
        topic: str | TopicId,
        sender: AgentId | None = ...,
        local_only: bool = ...,
        traceparent: str = ...,
    ) -> int: ...

    async def post(
        self, message: Any, *, to: AgentId, sender: AgentId | None = ..., traceparent: str = ...
    ) -> None: ...


class Remote:
    """Outbound/inbound envelope handling for one runtime (``local``), sharing its books."""

    __slots__ = ("books", "local", "messages", "name", "pending", "serving", "tracer", "transport")

    def __init__(self, local: Local, books: Books, transport: Transport | None) -> None:
        self.local = local
        self.books = books
        self.transport = transport
        self.messages = MessageTypes()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.serving: dict[tuple[str, int], asyncio.Task[Any]] = {}
        #: a span per inbound delivery when the transport has a tracer (a mesh node's)
        self.tracer: Tracer | None = getattr(transport, "tracer", None)
        self.name: str = str(getattr(transport, "name", "") or local.origin)

    # -- outbound ------------------------------------------------------------------
    async def send(
        self,
        message: Any,
        *,
        to: AgentId,
        timeout: float | None,
        sender: AgentId | None,
        traceparent: str = "",
    ) -> Any:
        transport = self.transport
        assert transport is not None
        books = self.books
        seq = books.next_id()
        books.counts["remote_send"] += 1
        metrics = self.local.metrics
        mid = MessageId(self.local.origin, seq)
        env = Envelope(
            id=mid,
            kind=Kind.SEND,
            sender=sender,
            recipient=to,
            deadline=time.time() + timeout if timeout is not None else 0.0,
            traceparent=traceparent,
            payload_type=wire_name(type(message)),
            payload=encode_payload(message),
        )
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[seq] = fut
        books.active += 1
        # engine_message_latency_seconds: request to reply, 1 request in LATENCY_SAMPLE
        t0 = time.perf_counter() if metrics is not None and not seq % LATENCY_SAMPLE else 0.0
        try:
            transport.send(env)
            if timeout is None:
                reply = await fut
            else:
                timer = asyncio.timeout(timeout)
                try:
                    async with timer:
                        reply = await fut
                except TimeoutError:
                    if not timer.expired():  # the remote side's own DeadlineExceeded: keep it
                        raise
                    raise DeadlineExceeded(
                        f"{to} did not reply to {type(message).__name__} within {timeout}s"
                    ) from None
            if t0 and metrics is not None:
                metrics.message_latency(time.perf_counter() - t0)
            return reply
        except asyncio.CancelledError:
            if not books.closed:
                # An empty Raw would encode to nothing (invalid msgpack): send nil.
                cancel = Envelope(
                    id=mid, kind=Kind.CANCEL, recipient=to, correlation=mid, payload=_NIL
                )
                transport.send(cancel)
            raise
        finally:
            self.pending.pop(seq, None)
            books.settle()

    def publish(
        self,
        message: Any,
        topic: TopicId,
        seq: int,
        sender: AgentId | None,
        traceparent: str = "",
    ) -> None:
        assert self.transport is not None
        self.transport.send(
            Envelope(
                id=MessageId(self.local.origin, seq),
                kind=Kind.PUBLISH,
                sender=sender,
                topic=topic,
                traceparent=traceparent,
                payload_type=wire_name(type(message)),
                payload=encode_payload(message),
            )
        )

    # -- inbound -------------------------------------------------------------------
    def deliver(self, envelope: Envelope) -> None:
        """Accept one envelope from the transport (never blocks)."""
        kind = envelope.kind
        if kind is Kind.REPLY or kind is Kind.ERROR:
            corr = envelope.correlation
            fut = self.pending.get(corr.seq) if corr is not None else None
            if fut is None or fut.done():
                return  # late or duplicate reply
            try:
                if kind is Kind.ERROR:
                    fut.set_exception(error_from_info(decode_payload(envelope.payload, ErrorInfo)))
                else:
                    fut.set_result(self.messages.decode(envelope))
            except EngineError as exc:
                fut.set_exception(exc)
        elif kind is Kind.CANCEL:
            corr = envelope.correlation
            serving = self.serving.get((corr.origin, corr.seq)) if corr is not None else None
            if serving is not None:
                serving.cancel()
        else:
            task = start_eager(asyncio.get_running_loop(), self._serve(envelope))
            if task is not None:  # the handler suspended: a CANCEL may stop it
                key = (envelope.id.origin, envelope.id.seq)
                self.serving[key] = task
                task.add_done_callback(lambda _t: self.serving.pop(key, None))

    async def _serve(self, envelope: Envelope) -> None:
        try:
            if self.tracer is None:
                reply = await self.handle(envelope)
            else:
                reply = await self._traced(envelope, self.tracer)
        except asyncio.CancelledError:
            if self.books.closed:
                raise  # unanswered: the mesh hands it to another node
            # cancelled by the sender's CANCEL: settle the delivery with an ERROR
            reply = self._error(envelope, asyncio.CancelledError("cancelled by the sender"))
        transport = self.transport
        if transport is None:
            return
        if reply is None:  # a PUBLISH: the answer says it was handed to its agents here
            reply = Envelope(
                id=MessageId(self.local.origin, self.books.next_id()),
                kind=Kind.REPLY,
                recipient=envelope.sender,
                correlation=envelope.id,
                payload=_NIL,
            )
        transport.send(reply)

    async def _traced(self, env: Envelope, tracer: Tracer) -> Envelope | None:
        """:meth:`handle` in a ``handler`` span continuing the envelope's trace.

        The handler sees the span's traceparent (``ctx.traceparent``), so what it sends is
        parented on this span.
        """
        from engine.observe.tracing import parse_traceparent

        target = env.recipient or env.topic
        attrs: dict[str, str | int] = {
            "engine.node": self.name,
            "engine.message_type": env.payload_type,
            "engine.attempt": env.attempt,
        }
        if target is not None:
            attrs["engine.target"] = str(target)
        parent: str | None = env.traceparent or None
        if parent is not None:
            try:
                parse_traceparent(parent)
            except EngineError:
                log.warning("%s: bad traceparent %r: starting a new trace", self.name, parent)
                parent = None
        with tracer.span(
            f"handle {env.payload_type}", parent, kind="handler", attributes=attrs
        ) as span:
            return await self.handle(msgspec.structs.replace(env, traceparent=span.traceparent))

    async def handle(self, envelope: Envelope) -> Envelope | None:
        """Run one inbound SEND/PUBLISH; return the REPLY or ERROR envelope for a SEND."""
        local = self.local
        kind = envelope.kind
        try:
            message = self.messages.decode(envelope)
            if kind is Kind.PUBLISH:
                if envelope.topic is not None:
                    await local.publish(
                        message,
                        topic=envelope.topic,
                        sender=envelope.sender,
                        local_only=True,
                        traceparent=envelope.traceparent,
                    )
                elif envelope.recipient is not None:
                    await local.post(
                        message,
                        to=envelope.recipient,
                        sender=envelope.sender,
                        traceparent=envelope.traceparent,
                    )
                else:
                    raise UndeliverableError("PUBLISH envelope has neither topic nor recipient")
                return None
            if kind is not Kind.SEND or envelope.recipient is None:
                raise UndeliverableError(
                    f"cannot handle a {kind.name} envelope"
                    + ("" if envelope.recipient else " without recipient")
                )
            self.books.counts["served"] += 1
            timeout = None
            if envelope.deadline:
                timeout = max(envelope.deadline - time.time(), 1e-3)
            result = await local.send(
                message,
                to=envelope.recipient,
                timeout=timeout,
                sender=envelope.sender,
                traceparent=envelope.traceparent,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if kind is not Kind.SEND:
                log.error("inbound %s %s failed", kind.name, envelope.id, exc_info=exc)
                return None
            return self._error(envelope, exc)
        return Envelope(
            id=MessageId(local.origin, self.books.next_id()),
            kind=Kind.REPLY,
            sender=envelope.recipient,
            recipient=envelope.sender,
            correlation=envelope.id,
            traceparent=envelope.traceparent,
            payload_type=wire_name(type(result)) if isinstance(result, Message) else "",
            payload=encode_payload(result),
        )

    def _error(self, envelope: Envelope, exc: BaseException) -> Envelope:
        """The ERROR envelope answering ``envelope``, whose handling raised ``exc``."""
        return Envelope(
            id=MessageId(self.local.origin, self.books.next_id()),
            kind=Kind.ERROR,
            sender=envelope.recipient,
            recipient=envelope.sender,
            correlation=envelope.id,
            traceparent=envelope.traceparent,
            payload_type="ErrorInfo",
            payload=encode_payload(error_info(exc)),
        )
