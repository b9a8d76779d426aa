"""Agents, messages and helpers shared by the runtime, tools and query tests."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import engine
from engine import Agent, Message, handler

T = TypeVar("T")


def uv(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an ``async def`` test on uvloop (no pytest-asyncio needed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return engine.run(fn(*args, **kwargs))

    return wrapper


# The runtime tests' messages carry their own wire names ("rt.Ping"): the mesh tests
# define same-named classes, and a process holding both must tell them apart.
class Ping(Message, tag="rt.Ping"):
    n: int


class Pong(Message, tag="rt.Pong"):
    n: int


class Boom(Message, tag="rt.Boom"):
    text: str


class Slow(Message, tag="rt.Slow"):
    seconds: float


class Note(Message, tag="rt.Note"):
    text: str


class SubPing(Ping, tag="rt.SubPing"):  # an explicit tag is inherited: set its own
    """A Ping subclass: handled by the Ping handler through the MRO."""


class Echo(Agent):
    """Replies Pong(n + 1); raises ValueError on Boom; sleeps on Slow."""

    __slots__ = ()

    @handler
    async def on_ping(self, msg: Ping, ctx: engine.Context) -> Pong:
        return Pong(msg.n + 1)

    @handler
    async def on_boom(self, msg: Boom, ctx: engine.Context) -> None:
        raise ValueError(msg.text)

    @handler
    async def on_slow(self, msg: Slow, ctx: engine.Context) -> str:
        await asyncio.sleep(msg.seconds)
        return "slept"


class SyncEcho(Agent):
    """A plain ``def`` handler (no coroutine)."""

    __slots__ = ()

    @handler
    def on_ping(self, msg: Ping, ctx: engine.Context) -> Pong:
        return Pong(msg.n * 10)


class Recorder(Agent):
    """Records what it handles (and when it starts/stops) into a class-level journal."""

    journal: list[tuple[str, Any]] = []

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def on_start(self) -> None:
        Recorder.journal.append(("start", self.id))

    async def on_stop(self) -> None:
        Recorder.journal.append(("stop", self.id))

    @handler
    async def on_any(self, msg: Ping | Note, ctx: engine.Context) -> int:
        self.seen.append(msg)
        Recorder.journal.append(("msg", (self.id, msg, ctx.topic, ctx.sender)))
        return len(self.seen)


class Gauge(Agent):
    """Measures how many of its handlers overlap; ``concurrent`` handler opt-in for Note."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.order: list[int] = []

    @handler
    async def on_ping(self, msg: Ping, ctx: engine.Context) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.001)
        self.order.append(msg.n)
        self.running -= 1
        return msg.n

    @handler(concurrent=True)
    async def on_note(self, msg: Note, ctx: engine.Context) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.01)
        self.running -= 1
        return self.peak


class Canceller(Agent):
    """Sleeps on Slow and records whether it saw the cancellation."""

    cancelled: list[Any] = []

    @handler
    async def on_slow(self, msg: Slow, ctx: engine.Context) -> str:
        try:
            await asyncio.sleep(msg.seconds)
        except asyncio.CancelledError:
            Canceller.cancelled.append(self.id)
            raise
        return "done"

    @handler
    async def on_ping(self, msg: Ping, ctx: engine.Context) -> Pong:
        return Pong(msg.n)


class Relay(Agent):
    """Forwards a Ping to ``echo/<key>`` with ctx.send and returns the reply plus one."""

    @handler
    async def on_ping(self, msg: Ping, ctx: engine.Context) -> Pong:
        reply = await ctx.send(Ping(msg.n), to=engine.AgentId("echo", self.id.key))
        assert isinstance(reply, Pong)
        return Pong(reply.n + 1)

    @handler
    async def on_slow(self, msg: Slow, ctx: engine.Context) -> str:
        result: str = await ctx.send(msg, to=engine.AgentId("echo", self.id.key))
        return result


class Stepper(Agent):
    """Counts down: Ping(n > 0) goes on to ``stepper/<n-1>``; each hop is one query step.

    ``handed_off`` records each hop's ``n`` as it sends on to the next one.
    """

    handed_off: list[int] = []

    @handler
    async def on_ping(self, msg: Ping, ctx: engine.Context) -> int:
        await asyncio.sleep(0.005)
        if msg.n <= 0:
            return 0
        Stepper.handed_off.append(msg.n)
        nxt = engine.AgentId("stepper", str(msg.n - 1))
        result: int = await ctx.send(Ping(msg.n - 1), to=nxt)
        return result + 1
