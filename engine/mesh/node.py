"""A mesh node: a DEALER peer hosting agent classes (``engine node``)."""

from __future__ import annotations

from typing import Any

from engine.mesh._hosting import AgentHost, load_agent_classes
from engine.mesh.peer import MeshPeer
from engine.mesh.protocol import Role
from engine.mesh.security import CurveClient

__all__ = ["Node"]


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
        super().__init__(connect, name=name, role=role, host=AgentHost(classes),
                         concurrency=concurrency, curve=curve, **kwargs)
