"""Agents shared by the mesh tests (importable by node subprocesses as ``mesh_agents``)."""

from __future__ import annotations

import asyncio
import os

from engine.messages import Message


class Ping(Message):
    n: int


class Pong(Message):
    n: int
    node: str = ""


class Boom(Message):
    text: str


class Sleep(Message):
    seconds: float
    n: int = 0


class Echo:
    """Answers Ping(n) with Pong(n + 1, node=<pid>)."""

    async def on_ping(self, msg: Ping, ctx: object) -> Pong:
        return Pong(msg.n + 1, node=os.environ.get("MESH_NODE_NAME", str(os.getpid())))

    async def on_boom(self, msg: Boom) -> Pong:
        raise ValueError(msg.text)

    async def on_sleep(self, msg: Sleep) -> Pong:
        await asyncio.sleep(msg.seconds)
        return Pong(msg.n, node=os.environ.get("MESH_NODE_NAME", str(os.getpid())))


class Listener:
    """Records pings published on ``pings.*`` (per process, in ``SEEN``)."""

    type_name = "listener"
    topics = ("pings.*",)
    SEEN: list[tuple[str, int]] = []

    async def on_ping(self, msg: Ping) -> None:
        Listener.SEEN.append((getattr(self, "id", None).key if hasattr(self, "id") else "", msg.n))
