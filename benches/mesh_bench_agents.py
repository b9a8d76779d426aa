"""Agents for benches/bench_mesh.py (imported by `engine node` subprocesses).

``Bench`` is an ``engine.Agent``, hosted on the node's Runtime (a node hosts nothing else).
"""

from __future__ import annotations

from engine import Agent, Context, handler
from engine.messages import Message


class Ping(Message, tag="bench.mesh.Ping"):
    n: int
    blob: bytes = b""


class Tick(Message, tag="bench.mesh.Tick"):
    n: int
    blob: bytes = b""


class Bench(Agent):
    """Echoes Ping; swallows Tick (one-way)."""

    type_name = "bench"

    @handler
    async def on_ping(self, msg: Ping, ctx: Context) -> Ping:
        return msg

    @handler
    async def on_tick(self, msg: Tick, ctx: Context) -> None:
        return None
