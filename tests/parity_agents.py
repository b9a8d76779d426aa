"""One agent for tests/test_agent_parity.py, run in process and on a node process alike.

``Parity`` brings its own hooks and middleware: its ``on_start`` installs them on the
runtime it runs on (once per runtime), so the very same class behaves the same wherever
it is registered — ``Runtime.register`` in process, ``engine node --agents
parity_agents:Parity`` on a node. What it saw is kept per process and read back with a
``Probe`` message (so the test asks the process the agent really ran in).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any, ClassVar

from engine import Agent, Context, handler
from engine.messages import Message


class Ask(Message, tag="parity.Ask"):
    n: int


class Answer(Message, tag="parity.Answer"):
    n: int
    path: list[str] = []  # what wrapped the handler, outermost first


class Fail(Message, tag="parity.Fail"):
    text: str


class Hold(Message, tag="parity.Hold"):
    key: str
    seconds: float = 60.0


class Note(Message, tag="parity.Note"):
    text: str


class Unhandled(Message, tag="parity.Unhandled"):
    n: int


class Probe(Message, tag="parity.Probe"):
    reset: bool = False


class Report(Message, tag="parity.Report"):
    handled: list[str]  # pre_handler hook: message types, in order
    errors: list[str]  # on_error hook: "Type: text"
    held: list[str]  # Hold handlers that started
    cancelled: list[str]  # Hold handlers that saw their cancellation
    notes: list[str]  # "key:text" of published notes handled
    starts: int  # on_start calls
    pid: int  # the process the agent runs in


class _Seen:
    handled: ClassVar[list[str]] = []
    errors: ClassVar[list[str]] = []
    held: ClassVar[list[str]] = []
    cancelled: ClassVar[list[str]] = []
    notes: ClassVar[list[str]] = []
    starts: ClassVar[int] = 0

    @classmethod
    def clear(cls) -> None:
        for seen in (cls.handled, cls.errors, cls.held, cls.cancelled, cls.notes):
            seen.clear()
        cls.starts = 0


_installed: weakref.WeakSet[Any] = weakref.WeakSet()


def _pre(ctx: Context, message: Any) -> None:
    _Seen.handled.append(type(message).__name__)


def _failed(ctx: Context, message: Any, exc: BaseException) -> None:
    _Seen.errors.append(f"{type(exc).__name__}: {exc}")


async def _mark(ctx: Any, value: Any, call_next: Any) -> Any:
    """Middleware: an Answer leaves with "mw" added to its path."""
    result = await call_next(ctx, value)
    if isinstance(result, Answer):
        result.path.insert(0, "mw")
    return result


class Parity(Agent):
    """Handlers, hooks, middleware, deadlines, cancellation and errors in one class."""

    type_name = "parity"
    topics = ("parity.*",)

    async def on_start(self) -> None:
        _Seen.starts += 1
        rt = self.runtime
        if rt not in _installed:
            _installed.add(rt)
            rt.hooks.add("pre_handler", _pre)
            rt.hooks.add("on_error", _failed)
            rt.use(_mark)

    @handler
    async def on_ask(self, msg: Ask, ctx: Context) -> Answer:
        return Answer(msg.n + 1, ["handler"])

    @handler
    async def on_fail(self, msg: Fail, ctx: Context) -> Answer:
        raise ValueError(msg.text)

    @handler(concurrent=True)
    async def on_hold(self, msg: Hold, ctx: Context) -> Answer:
        _Seen.held.append(msg.key)
        try:
            await asyncio.sleep(msg.seconds)
        except asyncio.CancelledError:
            _Seen.cancelled.append(msg.key)
            raise
        return Answer(0, ["held"])

    @handler
    async def on_note(self, msg: Note, ctx: Context) -> None:
        _Seen.notes.append(f"{self.id.key}:{msg.text}")

    @handler(concurrent=True)
    async def on_probe(self, msg: Probe, ctx: Context) -> Report:
        if msg.reset:
            _Seen.clear()
        return Report(
            list(_Seen.handled),
            list(_Seen.errors),
            list(_Seen.held),
            list(_Seen.cancelled),
            list(_Seen.notes),
            _Seen.starts,
            os.getpid(),
        )
