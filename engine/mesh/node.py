"""A mesh node: a :class:`~engine.Runtime` whose transport is the mesh (``engine node``).

A node hosts :class:`engine.Agent` subclasses on an in-process runtime (mailboxes, actor
semantics, hooks, middleware, deadlines, cancellation — exactly as in process); the node
itself is the DEALER peer carrying that runtime's traffic. A class's ``topics`` attribute
(patterns such as ``"pings.*"``) subscribes its type to them. Anything that is not an
``engine.Agent`` subclass is refused with :class:`~engine.errors.NotAnAgentError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from engine.mesh._agent_classes import agent_classes, load_agent_classes
from engine.mesh.peer import MeshPeer
from engine.mesh.protocol import Role
from engine.mesh.security import CurveClient
from engine.mesh.transport import MeshTransport
from engine.runtime import Runtime

__all__ = ["Node"]


class Node(MeshPeer):
    """Hosts ``agents`` (``{type_name: Agent subclass}`` or a ``pkg.mod:Class,...`` spec).

    >>> node = Node("tcp://broker:5555", {"echo": Echo}, concurrency=64)
    >>> await node.start()          # registers types "echo"; serves until close()

    ``node.runtime`` is the :class:`~engine.Runtime` the agents run on (register hooks and
    middleware there before :meth:`start`); ``runtime_options`` are passed to it.
    """

    def __init__(
        self,
        connect: str,
        agents: Mapping[str, type] | str,
        *,
        name: str | None = None,
        concurrency: int = 64,
        curve_dir: str | None = None,
        curve_key: str = "worker",
        role: Role | str = Role.WORKER,
        runtime_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        classes = load_agent_classes(agents) if isinstance(agents, str) else agent_classes(agents)
        curve = CurveClient.from_dir(curve_dir, curve_key) if curve_dir else None
        super().__init__(
            connect, name=name, role=role, concurrency=concurrency, curve=curve, **kwargs
        )
        self._link = MeshTransport.over(self)
        self.runtime = rt = Runtime(transport=self._link, **dict(runtime_options or {}))
        for type_name, cls in classes.items():
            rt.register(type_name, cls)
            self.announced[type_name] = None
            for pattern in getattr(cls, "topics", ()) or ():
                rt.subscribe(type_name, topic=pattern)
                self.patterns[pattern] = None

    @property
    def types(self) -> list[str]:
        """The agent types this node hosts."""
        return self.runtime.types

    async def start(self, timeout: float = 10.0) -> None:
        """Start the runtime: its transport (this peer) connects and registers."""
        self._link.connect_timeout = timeout
        await self.runtime.start()

    async def close(self, graceful: bool = True, timeout: float = 5.0) -> None:
        """Leave: refuse new deliveries, finish running ones (when graceful, up to
        ``timeout`` s), stop the runtime (``on_stop`` of every agent) and DISCONNECT."""
        if self._closed:
            return
        self._closing = True  # deliveries from now on go back to the broker
        self._refuse_waiting()
        if graceful:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.runtime.idle(), timeout)
        await self.runtime.stop()  # cancels what still runs; closes this peer
        await super().close(graceful, timeout)  # if the runtime never started it
