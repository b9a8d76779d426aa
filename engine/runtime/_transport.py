"""The boundary between a runtime and other runtimes: the :class:`Transport` protocol.

In process nothing crosses it: local sends pass the message object itself (no encoding)
while keeping the same headers an :class:`~engine.messages.Envelope` carries (message id,
sender, correlation, deadline), reachable from :class:`engine.Context`. Messages for agent
types this runtime does not host go to its transport as envelopes; the transport hands
inbound envelopes back through :meth:`TransportHost.deliver`.

:class:`LoopbackHub` is the reference implementation: runtimes in one process exchanging
encoded envelopes (the full codec path, no sockets). The ZeroMQ transport
(``engine.mesh``) implements the same protocol.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

from engine.errors import UndeliverableError
from engine.messages import Envelope, ErrorInfo, Kind, decode, encode, encode_payload

__all__ = ["LoopbackHub", "LoopbackTransport", "Transport", "TransportHost"]


class TransportHost(Protocol):
    """What a runtime offers its transport."""

    @property
    def origin(self) -> str: ...

    def deliver(self, envelope: Envelope) -> None:
        """Accept one inbound envelope (SEND, PUBLISH, REPLY, ERROR or CANCEL)."""


@runtime_checkable
class Transport(Protocol):
    """Carries envelopes between runtimes.

    ``send`` must not block: it queues the envelope (the transport owns flow control).
    ``announce``/``subscribe`` tell the other side which agent types and topic patterns
    this runtime serves, so a broker can route SEND by recipient type and PUBLISH by topic.
    """

    async def start(self, host: TransportHost) -> None: ...

    def send(self, envelope: Envelope) -> None: ...

    def announce(self, agent_type: str) -> None: ...

    def subscribe(self, pattern: str) -> None: ...

    async def close(self) -> None: ...


class LoopbackHub:
    """Connects runtimes in one process through encoded envelopes (a tiny broker)."""

    def __init__(self) -> None:
        self._hosts: dict[str, TransportHost] = {}
        self._types: dict[str, str] = {}  # agent type -> origin
        self._subscribers: dict[str, set[str]] = {}

    def transport(self) -> LoopbackTransport:
        return LoopbackTransport(self)

    def attach(self, origin: str, host: TransportHost) -> None:
        self._hosts[origin] = host

    def detach(self, origin: str) -> None:
        """Forget ``origin``: its host, the agent types it served, its subscriptions."""
        self._hosts.pop(origin, None)
        for t, o in list(self._types.items()):
            if o == origin:
                del self._types[t]
        self._subscribers.pop(origin, None)

    def announce(self, origin: str, agent_type: str) -> None:
        self._types[agent_type] = origin

    def subscribe(self, origin: str, pattern: str) -> None:
        self._subscribers.setdefault(origin, set()).add(pattern)

    def route(self, origin: str, data: bytes) -> None:
        """Deliver one encoded envelope sent by ``origin``."""
        env = decode(data)  # every hop goes through the real codec
        if env.kind in (Kind.REPLY, Kind.ERROR, Kind.CANCEL):
            if env.kind is Kind.CANCEL:
                target = self._types.get(env.recipient.type) if env.recipient else None
            else:
                target = env.correlation.origin if env.correlation is not None else None
            host = self._hosts.get(target) if target is not None else None
            if host is not None:
                host.deliver(env)
            return
        if env.kind is Kind.PUBLISH:
            for other, host in self._hosts.items():
                if other != origin and other in self._subscribers:
                    host.deliver(env)
            return
        recipient = env.recipient
        target = self._types.get(recipient.type) if recipient is not None else None
        host = self._hosts.get(target) if target is not None else None
        if host is None:
            what = recipient.type if recipient is not None else "(none)"
            error = ErrorInfo(UndeliverableError.__name__, f"no runtime serves agent type {what!r}")
            back = self._hosts.get(origin)
            if back is not None:
                back.deliver(
                    Envelope(
                        id=env.id,
                        kind=Kind.ERROR,
                        recipient=env.sender,
                        correlation=env.id,
                        payload_type="ErrorInfo",
                        payload=encode_payload(error),
                    )
                )
            return
        host.deliver(env)


class LoopbackTransport:
    """One runtime's attachment to a :class:`LoopbackHub`."""

    def __init__(self, hub: LoopbackHub) -> None:
        self._hub = hub
        self._origin = ""
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, host: TransportHost) -> None:
        self._origin = host.origin
        self._loop = asyncio.get_running_loop()
        self._hub.attach(self._origin, host)

    def send(self, envelope: Envelope) -> None:
        data = encode(envelope)
        assert self._loop is not None, "transport used before start()"
        self._loop.call_soon(self._hub.route, self._origin, data)

    def announce(self, agent_type: str) -> None:
        self._hub.announce(self._origin, agent_type)

    def subscribe(self, pattern: str) -> None:
        self._hub.subscribe(self._origin, pattern)

    async def close(self) -> None:
        self._hub.detach(self._origin)
