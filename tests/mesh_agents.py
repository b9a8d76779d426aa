"""Agents shared by the mesh tests (importable by node subprocesses as ``mesh_agents``).

``Echo`` and ``Listener`` are ``engine.Agent`` subclasses, so nodes run them on the
in-process Runtime; ``PlainEcho`` is a plain class, which a node refuses.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import ClassVar

from engine import Agent, Context, handler
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


def _node() -> str:
    return os.environ.get("MESH_NODE_NAME", str(os.getpid()))


def _executed(n: int) -> None:
    """Record a finished execution (``MESH_EXEC_LOG``: one ``node n time`` line each)."""
    path = os.environ.get("MESH_EXEC_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{_node()} {n} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)


class Echo(Agent):
    """Answers Ping(n) with Pong(n + 1, node=<node name>)."""

    @handler
    async def on_ping(self, msg: Ping, ctx: Context) -> Pong:
        return Pong(msg.n + 1, node=_node())

    @handler
    async def on_boom(self, msg: Boom, ctx: Context) -> Pong:
        raise ValueError(msg.text)

    @handler(concurrent=True)
    async def on_sleep(self, msg: Sleep, ctx: Context) -> Pong:
        await asyncio.sleep(msg.seconds)
        _executed(msg.n)
        return Pong(msg.n, node=_node())


class Listener(Agent):
    """Records pings published on ``pings.*`` (per process, in ``SEEN``)."""

    type_name = "listener"
    topics = ("pings.*",)
    SEEN: ClassVar[list[tuple[str, int]]] = []

    @handler
    async def on_ping(self, msg: Ping, ctx: Context) -> None:
        Listener.SEEN.append((self.id.key, msg.n))


class PlainEcho:
    """Not an engine Agent: a node refuses to host it (NotAnAgentError)."""

    async def on_ping(self, msg: Ping, ctx: object) -> Pong:
        return Pong(msg.n + 1, node="plain")

    async def on_boom(self, msg: Boom) -> Pong:
        raise ValueError(msg.text)


class Recorder(Agent):
    """Sleeps ``Sleep.seconds``, then records ``Sleep.n`` (per process, in ``DONE``)."""

    type_name = "recorder"
    DONE: ClassVar[list[int]] = []

    @handler
    async def on_sleep(self, msg: Sleep, ctx: Context) -> None:
        await asyncio.sleep(msg.seconds)
        Recorder.DONE.append(msg.n)


class Metered(Agent):
    """Records one LLM call per Ping in the process-wide metrics, as an LLM-calling agent's
    provider does (``engine.llm`` reports to ``default_metrics()``)."""

    type_name = "metered"

    @handler
    async def on_ping(self, msg: Ping, ctx: Context) -> Pong:
        from engine.observe.metrics import default_metrics

        default_metrics().llm_call("node-test-model", 0.01, prompt_tokens=msg.n)
        return Pong(msg.n, node=_node())
