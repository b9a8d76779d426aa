"""The runtime's parts on their own: the transport registry, the books, the tool host.

The runtime is tested end to end in ``test_runtime.py``; these check the seams issue 18
made: ``Runtime(mesh=...)`` resolves through a registry, the books count work in flight for
both sides of the runtime, and a ``ToolRegistry`` needs only a ``ToolHost``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine import AgentId, Runtime, tool
from engine._transports import provide, register_transport, transport_for
from engine.runtime import Hooks, LoopbackHub
from engine.runtime._books import Books
from engine.tools import ToolRegistry
from tests._wait import until
from tests.agents_for_tests import Echo, Ping, Pong, uv


def test_an_unknown_transport_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"no 'pigeon' transport is registered \(registered: "):
        transport_for("pigeon", "coop://roof")


@pytest.mark.parametrize(
    ("kind", "factory", "error"),
    [("", LoopbackHub, ValueError), ("a-b", LoopbackHub, ValueError), ("ok", 42, TypeError)],
)
def test_register_transport_checks_its_input(kind: str, factory: Any, error: type) -> None:
    with pytest.raises(error):
        register_transport(kind, factory)


def test_a_registered_factory_builds_the_transport() -> None:
    hub = LoopbackHub()
    seen: list[str] = []

    def factory(address: str) -> Any:
        seen.append(address)
        return hub.transport()

    register_transport("loopback_test", factory)
    transport = transport_for("loopback_test", "hub://one")
    assert seen == ["hub://one"] and transport._hub is hub


def test_a_provider_module_is_imported_on_first_use() -> None:
    """``provide`` names a module whose import registers the kind (as engine.mesh does)."""
    provide("never_registers", "json")  # importing json registers nothing
    with pytest.raises(ValueError, match="no 'never_registers' transport is registered"):
        transport_for("never_registers", "x")


def test_runtime_mesh_resolves_through_the_registry() -> None:
    transport = Runtime(mesh="tcp://127.0.0.1:9")._transport  # not started: no socket yet
    from engine.mesh.transport import MeshTransport

    assert isinstance(transport, MeshTransport)
    with pytest.raises(ValueError, match="either mesh= or transport="):
        Runtime(mesh="tcp://127.0.0.1:9", transport=LoopbackHub().transport())


@uv
async def test_books_wake_idle_waiters_when_work_settles() -> None:
    books = Books()
    books.active = 2
    waiter = asyncio.ensure_future(books.idle())
    await asyncio.sleep(0)
    books.settle()
    await asyncio.sleep(0)
    assert not waiter.done() and books.active == 1
    books.settle()
    await asyncio.wait_for(waiter, 30)
    assert books.waiters == []


def test_books_count_sends_from_ids() -> None:
    books = Books()
    books.seq += 3  # three sends, drawn inline on the hot path
    books.next_id()  # a query id: not a send
    books.seq += 1
    books.counts["publish"] += 1  # ... the fourth inline id was a publish
    assert books.message_counts()["send"] == 3


@uv
async def test_remote_requests_count_in_the_shared_books() -> None:
    """A request through the transport is work in flight for rt.idle() and stats."""
    hub = LoopbackHub()
    async with (
        Runtime(transport=hub.transport()) as server,
        Runtime(transport=hub.transport()) as client,
    ):
        server.register("echo", Echo)
        gate = asyncio.Event()

        async def held(ctx: Any, msg: Any, call_next: Any) -> Any:
            await gate.wait()
            return await call_next(ctx, msg)

        server.use(held)
        reply = asyncio.ensure_future(client.send(Ping(1), to=AgentId("echo", "a")))
        await until(lambda: client.stats()["remote_pending"] == 1)
        assert client.stats()["in_flight"] == 1
        idle = asyncio.ensure_future(client.idle())
        await asyncio.sleep(0)
        assert not idle.done()
        gate.set()
        assert await asyncio.wait_for(reply, 30) == Pong(2)  # Echo answers n + 1
        await asyncio.wait_for(idle, 30)
        assert client.message_counts()["remote_send"] == 1
        assert server.message_counts()["served"] == 1


class _Host:
    """The smallest ToolHost: hooks and nothing else (no runtime)."""

    def __init__(self) -> None:
        self.hooks = Hooks()


@uv
async def test_a_tool_registry_needs_only_a_tool_host() -> None:
    host = _Host()
    seen: list[tuple[str, Any]] = []
    host.hooks.add("pre_tool", lambda call, args: seen.append(("pre", call.tool.name)))
    host.hooks.add("post_tool", lambda call, result, s: seen.append(("post", result)))
    registry = ToolRegistry(host)

    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    registry.add(add)
    try:
        assert await registry.call("add", {"a": 2, "b": 3}) == 5
    finally:
        registry.close()
    assert seen == [("pre", "add"), ("post", 5)]
