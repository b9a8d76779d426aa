"""A mesh node: a DEALER peer hosting agent classes (``engine node``).

``engine.Agent`` subclasses run on an in-process :class:`engine.Runtime` (mailboxes,
actor semantics, hooks, middleware — everything the runtime offers); plain classes with
typed ``async`` methods run on the small :class:`~engine.mesh.AgentHost`. A class's
``topics`` attribute (patterns such as ``"pings.*"``) subscribes its type to them.
"""

from __future__ import annotations

from typing import Any

from engine.mesh._hosting import AgentHost, load_agent_classes
from engine.mesh.peer import Host, MeshPeer
from engine.mesh.protocol import Role
from engine.mesh.security import CurveClient

__all__ = ["Node", "make_host"]


def make_host(classes: dict[str, type]) -> Host:
    """A Runtime for ``engine.Agent`` subclasses, else an :class:`AgentHost`."""
    from engine.agents import Agent

    if not all(isinstance(c, type) and issubclass(c, Agent) for c in classes.values()):
        return AgentHost(classes)
    from engine.runtime import Runtime

    rt = Runtime()
    for type_name, cls in classes.items():
        rt.register(type_name, cls)
        for pattern in getattr(cls, "topics", ()) or ():
            rt.subscribe(type_name, topic=pattern)
    return rt


class Node(MeshPeer):
    """Hosts ``agents`` (``{type_name: class}`` or a ``pkg.mod:Class,...`` spec) for the mesh.

    >>> node = Node("tcp://broker:5555", {"echo": Echo}, concurrency=64)
    >>> await node.start()          # registers types "echo"; serves until close()
    """

    def __init__(
        self,
        connect: str,
        agents: dict[str, type] | str,
        *,
        name: str | None = None,
        concurrency: int = 64,
        curve_dir: str | None = None,
        curve_key: str = "worker",
        role: Role | str = Role.WORKER,
        **kwargs: Any,
    ) -> None:
        classes = load_agent_classes(agents) if isinstance(agents, str) else dict(agents)
        curve = CurveClient.from_dir(curve_dir, curve_key) if curve_dir else None
        super().__init__(
            connect,
            name=name,
            role=role,
            host=make_host(classes),
            concurrency=concurrency,
            curve=curve,
            **kwargs,
        )

    async def close(self, graceful: bool = True, timeout: float = 5.0) -> None:
        await super().close(graceful, timeout)
        stop = getattr(self.host, "stop", None)
        if stop is not None:
            await stop()
