"""The runtime's side of its transport: outbound requests, inbound envelopes.

:class:`Remote` keeps the requests waiting for a remote reply (keyed by sequence number:
the correlation id of the reply) and the local handlers serving remote requests (keyed
by the request id, so a CANCEL envelope can stop them). :meth:`Remote.handle` is also the
``Host.handle`` a mesh peer calls: one delivered envelope in, the REPLY/ERROR out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

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
from engine.runtime._transport import Transport
from engine.runtime._wire import MessageTypes, error_from_info, error_info

if TYPE_CHECKING:
    from engine.runtime._local import Runtime

__all__ = ["Remote"]

log = logging.getLogger("engine.runtime")
_NIL = encode_payload(None)
#: One request in this many through the transport has its round trip timed (with metrics).
LATENCY_SAMPLE = 16


class Remote:
    """Outbound/inbound envelope handling for one runtime."""

    __slots__ = ("messages", "pending", "rt", "serving", "transport")

    def __init__(self, rt: Runtime, transport: Transport | None) -> None:
        self.rt = rt
        self.transport = transport
        self.messages = MessageTypes()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.serving: dict[tuple[str, int], asyncio.Task[Any]] = {}

    # -- outbound ------------------------------------------------------------------
    async def send(
        self,
        message: Any,
        to: AgentId,
        timeout: float | None,
        sender: AgentId | None,
        traceparent: str = "",
    ) -> Any:
        transport = self.transport
        assert transport is not None
        rt = self.rt
        seq = rt._next_seq()
        rt._counts["remote_send"] += 1
        mid = MessageId(rt.origin, seq)
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
        rt._active += 1
        # engine_message_latency_seconds: request to reply, 1 request in LATENCY_SAMPLE
        t0 = time.perf_counter() if rt.metrics is not None and not seq % LATENCY_SAMPLE else 0.0
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
            if t0 and rt.metrics is not None:
                rt.metrics.message_latency(time.perf_counter() - t0)
            return reply
        except asyncio.CancelledError:
            if not rt._closed:
                # An empty Raw would encode to nothing (invalid msgpack): send nil.
                cancel = Envelope(
                    id=mid, kind=Kind.CANCEL, recipient=to, correlation=mid, payload=_NIL
                )
                transport.send(cancel)
            raise
        finally:
            self.pending.pop(seq, None)
            rt._active -= 1
            if not rt._active:
                rt._wake_idle()

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
                id=MessageId(self.rt.origin, seq),
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
            key = (envelope.id.origin, envelope.id.seq)
            task = asyncio.get_running_loop().create_task(self._serve(envelope))
            self.serving[key] = task
            task.add_done_callback(lambda _t: self.serving.pop(key, None))

    async def _serve(self, envelope: Envelope) -> None:
        reply = await self.handle(envelope)
        if reply is not None and self.transport is not None:
            self.transport.send(reply)

    async def handle(self, envelope: Envelope) -> Envelope | None:
        """Run one inbound SEND/PUBLISH; return the REPLY or ERROR envelope for a SEND."""
        rt = self.rt
        kind = envelope.kind
        try:
            message = self.messages.decode(envelope)
            if kind is Kind.PUBLISH:
                if envelope.topic is not None:
                    await rt.publish(
                        message,
                        topic=envelope.topic,
                        sender=envelope.sender,
                        local_only=True,
                        traceparent=envelope.traceparent,
                    )
                elif envelope.recipient is not None:
                    await rt.post(
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
            rt._counts["served"] += 1
            timeout = None
            if envelope.deadline:
                timeout = max(envelope.deadline - time.time(), 1e-3)
            result = await rt.send(
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
            return Envelope(
                id=MessageId(rt.origin, rt._next_seq()),
                kind=Kind.ERROR,
                sender=envelope.recipient,
                recipient=envelope.sender,
                correlation=envelope.id,
                traceparent=envelope.traceparent,
                payload_type="ErrorInfo",
                payload=encode_payload(error_info(exc)),
            )
        return Envelope(
            id=MessageId(rt.origin, rt._next_seq()),
            kind=Kind.REPLY,
            sender=envelope.recipient,
            recipient=envelope.sender,
            correlation=envelope.id,
            traceparent=envelope.traceparent,
            payload_type=wire_name(type(result)) if isinstance(result, Message) else "",
            payload=encode_payload(result),
        )
