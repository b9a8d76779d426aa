"""Agents for benches/bench_mesh.py (imported by `engine node` subprocesses)."""

from __future__ import annotations

from engine.messages import Message


class Ping(Message):
    n: int
    blob: bytes = b""


class Tick(Message):
    n: int
    blob: bytes = b""


class Bench:
    """Echoes Ping; swallows Tick (one-way)."""

    type_name = "bench"

    async def on_ping(self, msg: Ping) -> Ping:
        return msg

    async def on_tick(self, msg: Tick) -> None:
        return None
