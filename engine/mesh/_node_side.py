"""The node half of a mesh peer's shell: deliveries go to the runtime it carries.

:class:`NodeSide` is mixed into :class:`engine.mesh.MeshPeer`. A peer serving agents is the
transport of a :class:`engine.Runtime` (``Runtime(mesh=...)``, or an
:class:`engine.mesh.Node`): every delivery, and every CANCEL of one, goes to the runtime's
``deliver`` (its :class:`Sink`), the one entry point of a message onto a node, at most
``concurrency`` at a time (the rest wait here, in order). The runtime
answers through :meth:`MeshPeer.post`, which hands the answer to the peer core
(``PeerCore.answer``: it remembers it for duplicates). A one-way message runs as a request
whose reply becomes its ACK, so it is acknowledged only once handled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Protocol

import msgspec

from engine.errors import EncodeError
from engine.mesh.peer_core import Cancelled, PeerCore
from engine.messages import Envelope, Kind, MessageId, MessageIds
from engine.runtime._wire import error_info

__all__ = ["NodeSide", "Sink"]

log = logging.getLogger("engine.mesh.peer")


class Sink(Protocol):
    """Where a peer hands inbound envelopes (a runtime's ``TransportHost``)."""

    @property
    def origin(self) -> str: ...

    def deliver(self, envelope: Envelope) -> None: ...


class NodeSide:
    """Deliveries to run here (mixed into MeshPeer, which sets these attributes)."""

    name: str
    ids: MessageIds
    core: PeerCore
    concurrency: int
    _sink: Sink | None
    _closing: bool
    _flush_scheduled: bool
    _active: set[MessageId]  # handed to the sink, not answered yet
    _waiting: deque[Envelope]  # delivered beyond ``concurrency``: handed on in order

    def _schedule_flush(self) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def attach(self, sink: Sink) -> None:
        """Hand every inbound envelope to ``sink.deliver`` (a Runtime), before start()."""
        self._sink = sink
        self.ids = MessageIds(sink.origin)
        self.core.origin = sink.origin

    def _on_deliver(self, env: Envelope, tell: bool) -> None:
        if tell:  # handled like a request, so that its ACK follows the handling
            env = msgspec.structs.replace(env, kind=Kind.SEND)
        sink = self._sink
        if self._closing:
            self.core.reject(env.id, "shutting down")
        elif sink is None:
            self.core.reject(env.id, "not hosting agents")
        elif len(self._active) < self.concurrency:
            self._active.add(env.id)
            sink.deliver(env)
        else:
            self._waiting.append(env)
        self._schedule_flush()

    def _on_cancel(self, event: Cancelled) -> None:
        """Stop the request ``event.target`` if it runs here (never acked: untracked)."""
        if self._sink is None:
            return
        for env in self._waiting:
            if env.id == event.target:  # not started: answered as if cancelled running
                self._waiting.remove(env)
                cancelled = asyncio.CancelledError("cancelled by the sender")
                self._answer(
                    Envelope(
                        self.ids.next(),
                        Kind.ERROR,
                        sender=env.recipient,
                        recipient=env.sender,
                        correlation=env.id,
                        payload_type="ErrorInfo",
                        payload=msgspec.Raw(msgspec.msgpack.encode(error_info(cancelled))),
                    )
                )
                return
        self._sink.deliver(event.env)

    def _refuse_waiting(self) -> None:
        """Closing: deliveries not started go back to the broker (it routes them on)."""
        while self._waiting:
            self.core.reject(self._waiting.popleft().id, "shutting down")
        self._schedule_flush()

    def _next(self) -> None:
        """A running delivery was answered: hand on those waiting for its place."""
        waiting, active, sink = self._waiting, self._active, self._sink
        while waiting and len(active) < self.concurrency and sink is not None:
            env = waiting.popleft()
            active.add(env.id)
            sink.deliver(env)

    def _answer(self, envelope: Envelope) -> None:
        """The runtime's REPLY/ERROR for a delivery: to the core (which remembers it)."""
        core = self.core
        corr = envelope.correlation
        if corr is not None and corr in core.running:
            data: bytes | None = None
            if corr in core.tells:  # PERF: a one-way message's answer is its ACK: no encoding
                if envelope.kind is Kind.ERROR:
                    log.warning(
                        "%s: one-way message %s failed: %s",
                        self.name,
                        corr,
                        bytes(envelope.payload)[:200],
                    )
            else:
                data = core.codec.encode(envelope)
                if len(data) > core.max_frame - 64:
                    info = error_info(
                        EncodeError(f"reply of {len(data)} bytes exceeds the broker's limit")
                    )
                    too_big = msgspec.structs.replace(
                        envelope,
                        kind=Kind.ERROR,
                        payload_type="ErrorInfo",
                        payload=msgspec.Raw(msgspec.msgpack.encode(info)),
                    )
                    data = core.codec.encode(too_big)
            core.answer(corr, data, time.monotonic())
        else:
            core.out.reply.append(core.codec.encode(envelope))
        if core.running or self._flush_scheduled:
            self._schedule_flush()  # batched with what the others produce (or the drain's)
        else:
            # PERF: the last running delivery answers at once rather than in a call_soon'd
            # flush: one loop iteration less per request on a node (benches/bench_mesh.py).
            self._flush()
        if corr in self._active:
            self._active.discard(corr)
            if self._waiting:
                self._next()
