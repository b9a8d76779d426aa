"""A mesh client: submits work to agents on any node and awaits replies."""

from __future__ import annotations

from typing import Any

from engine.mesh.peer import MeshPeer
from engine.mesh.protocol import Role
from engine.mesh.security import CurveClient

__all__ = ["MeshClient"]


class MeshClient(MeshPeer):
    """``async with MeshClient("tcp://broker:5555") as c: await c.send(Ping(1), to=aid)``.

    At-least-once: submissions the broker has not acknowledged, and requests without a
    reply, are resent after the broker restarts; replies are de-duplicated by correlation
    id, so each ``send`` returns exactly one reply.
    """

    def __init__(
        self,
        connect: str,
        *,
        name: str | None = None,
        curve_dir: str | None = None,
        curve_key: str = "orchestrator",
        role: Role | str = Role.ORCHESTRATOR,
        **kwargs: Any,
    ) -> None:
        curve = CurveClient.from_dir(curve_dir, curve_key) if curve_dir else None
        super().__init__(connect, name=name, role=role, curve=curve, **kwargs)
