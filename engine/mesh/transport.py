"""The ZeroMQ transport of ``engine.runtime``: ``Runtime(mesh="tcp://HOST:5555")``.

Importing this module registers it as the ``"mesh"`` transport (``engine._transports``),
which is how ``Runtime(mesh=...)`` finds it: the runtime imports nothing from the mesh.

It implements the runtime's ``Transport`` protocol (``start(host)``, ``send``,
``announce``, ``subscribe``, ``close``) on a :class:`~engine.mesh.peer.MeshPeer` the
runtime is attached to: outbound envelopes are queued without blocking (the window and a
backlog are the flow control), inbound ones go to ``host.deliver`` (the one entry point).
Agent types the runtime registers are announced to the broker, so its local agents serve
mesh traffic too; an :class:`engine.mesh.Node` is this, with a peer of its own
(:meth:`MeshTransport.over`). A peer's ``tracer`` becomes the runtime's span per delivery.
"""

from __future__ import annotations

from typing import Any

from engine._transports import register_transport
from engine.mesh.peer import MeshPeer, Sink
from engine.mesh.protocol import Role
from engine.mesh.security import CurveClient
from engine.messages import Envelope
from engine.observe.tracing import Tracer

__all__ = ["MeshTransport"]


class MeshTransport:
    """Connects one runtime to a mesh broker."""

    def __init__(
        self,
        connect: str,
        *,
        name: str | None = None,
        role: Role | str = Role.ORCHESTRATOR,
        concurrency: int = 64,
        curve_dir: str | None = None,
        curve_key: str = "orchestrator",
        connect_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        curve = CurveClient.from_dir(curve_dir, curve_key) if curve_dir else None
        self.peer = MeshPeer(
            connect, name=name, role=role, concurrency=concurrency, curve=curve, **kwargs
        )
        self.connect_timeout = connect_timeout
        self._started = False

    @classmethod
    def over(cls, peer: MeshPeer, connect_timeout: float = 10.0) -> MeshTransport:
        """The transport of an existing peer (an :class:`engine.mesh.Node` is its own)."""
        self = cls.__new__(cls)
        self.peer = peer
        self.connect_timeout = connect_timeout
        self._started = False
        return self

    async def start(self, host: Sink) -> None:
        self.peer.attach(host)
        await self.peer.join(timeout=self.connect_timeout)
        self._started = True

    @property
    def tracer(self) -> Tracer | None:
        """The peer's tracer: the runtime opens a ``handler`` span per delivery on it."""
        return self.peer.tracer

    @property
    def name(self) -> str:
        return self.peer.name

    def send(self, envelope: Envelope) -> None:
        self.peer.post(envelope)

    def announce(self, agent_type: str) -> None:
        if agent_type not in self.peer.announced:
            self.peer.announced[agent_type] = None
            if self._started:
                self.peer.reregister()

    def subscribe(self, pattern: str) -> None:
        if pattern not in self.peer.patterns:
            self.peer.patterns[pattern] = None
            if self._started:
                self.peer.reregister()

    async def close(self) -> None:
        await self.peer.close()


register_transport("mesh", MeshTransport)
