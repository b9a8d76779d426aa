"""The node half of a mesh peer's shell: running deliveries on a host.

:class:`NodeSide` is mixed into :class:`engine.mesh.MeshPeer`. A delivery runs on the
peer's ``host`` (an ``AgentHost`` or a ``Runtime``) with at most ``concurrency`` at once,
eagerly (no task for a handler that finishes without suspending); its answer goes back
through the peer core (``PeerCore.answer``), which also remembers it for duplicates. A
one-way message runs as a request whose reply becomes its ACK, so it is acknowledged
only once handled.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

import msgspec

from engine.errors import EncodeError, EngineError
from engine.mesh._serving import Slots, empty_reply, error_reply, resume
from engine.mesh.peer_core import Cancelled, PeerCore
from engine.messages import Envelope, Kind, MessageId, MessageIds
from engine.observe.tracing import Tracer, parse_traceparent

__all__ = ["Host", "NodeSide", "Sink"]

log = logging.getLogger("engine.mesh.peer")


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


class NodeSide:
    """Deliveries to run here (mixed into MeshPeer, which sets these attributes)."""

    name: str
    ids: MessageIds
    core: PeerCore
    host: Host | None
    tracer: Tracer | None
    _sink: Sink | None
    _closing: bool
    _loop: asyncio.AbstractEventLoop | None
    _slots: Slots
    _tasks: set[asyncio.Task[None]]
    _serving: dict[MessageId, asyncio.Task[None]]
    _eager: bool
    _flush_scheduled: bool

    def _schedule_flush(self) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _on_deliver(self, env: Envelope, tell: bool) -> None:
        if tell:  # handled like a request, so that its ACK follows the handling
            env = msgspec.structs.replace(env, kind=Kind.SEND)
        sink = self._sink
        if self._closing:
            self.core.reject(env.id, "shutting down")
        elif sink is not None:
            sink.deliver(env)
        elif self.host is None:
            self.core.reject(env.id, "not hosting agents")
        else:
            task = self._start(self._execute(self.host, env), env.id)
            if task is not None:
                self._serving[env.id] = task
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
        else:
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
            task = self._loop.create_task(resume(coro, yielded), context=ctx)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._served, mid))
        return task

    def _served(self, mid: MessageId, task: asyncio.Task[None]) -> None:
        """One done callback per delivery task (PERF: each callback is a call_soon)."""
        self._tasks.discard(task)
        self._serving.pop(mid, None)

    def _on_cancel(self, event: Cancelled) -> None:
        """Stop the request ``event.target`` if it runs here (never acked: untracked)."""
        if self._sink is not None:
            self._sink.deliver(event.env)
            return
        task = self._serving.get(event.target)
        if task is not None:
            task.cancel()

    async def _execute(self, host: Host, env: Envelope) -> None:
        slots, slot = self._slots, False
        try:
            # Inside the try: a CANCEL while waiting for a slot is answered like one while
            # running (else the id stays running here and the broker's credit leaks).
            if slots.free > 0:
                slots.free -= 1
            else:
                await slots.wait()
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
                slots.release()
        core = self.core
        data: bytes | None = None
        if env.id in core.tells:  # PERF: a one-way message's answer is its ACK: no encoding
            if reply is not None and reply.kind is Kind.ERROR:
                log.warning(
                    "%s: one-way message %s failed: %s",
                    self.name,
                    env.id,
                    bytes(reply.payload)[:200],
                )
        else:
            if reply is None:
                reply = empty_reply(env, self.ids.next())
            data = core.codec.encode(reply)
            if len(data) > core.max_frame - 64:
                too_big = EncodeError(f"reply of {len(data)} bytes exceeds the broker's limit")
                data = core.codec.encode(error_reply(env, too_big, self.ids.next()))
        core.answer(env.id, data, time.monotonic())
        if core.running or self._flush_scheduled:
            self._schedule_flush()  # batched with what the others produce (or the drain's)
        else:
            # PERF: the last running delivery answers at once rather than in a call_soon'd
            # flush: one loop iteration less per request on a node (benches/bench_mesh.py).
            self._flush()

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
            return await host.handle(msgspec.structs.replace(env, traceparent=span.traceparent))
