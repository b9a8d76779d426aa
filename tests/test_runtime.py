"""Behaviour of the in-process runtime: delivery, mailboxes, errors, lifecycle, hooks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

import engine
from engine import (
    Agent,
    AgentId,
    CycleError,
    DeadlineExceeded,
    MailboxFull,
    RemoteError,
    RoutingError,
    Runtime,
    Spawn,
    TopicId,
    UndeliverableError,
    handler,
)
from tests._clock import FakeClock
from tests._wait import until
from tests.agents_for_tests import (
    Boom,
    Canceller,
    Echo,
    Gauge,
    Note,
    Ping,
    Pong,
    Recorder,
    Relay,
    Slow,
    SubPing,
    SyncEcho,
    uv,
)


@pytest.fixture(autouse=True)
def _reset_journals() -> None:
    Recorder.journal.clear()
    Canceller.cancelled.clear()


# -- the issue's example ---------------------------------------------------------


class IssuePing(engine.Message):
    n: int


class IssueEcho(Agent):
    @handler
    async def on_ping(self, msg: IssuePing, ctx: engine.Context) -> IssuePing:
        return IssuePing(msg.n + 1)


@uv
async def test_issue_example() -> None:
    seen: list[tuple[AgentId, int]] = []
    remove = None
    async with Runtime() as rt:
        rt.register("echo", IssueEcho)
        reply = await rt.send(IssuePing(1), to=AgentId("echo", "a"), timeout=1.0)
        assert reply == IssuePing(2)
        rt.subscribe("echo", topic="pings.*")
        remove = rt.hooks.add("post_handler", lambda c, m, r, s: seen.append((c.agent.id, r.n)))
        assert await rt.publish(IssuePing(2), topic="pings.eu") == 1
        await rt.stop_when_idle()
    assert seen == [(AgentId("echo", "default"), 3)]
    assert remove is not None


# -- dispatch --------------------------------------------------------------------


@uv
async def test_sync_handler_union_and_subclass_dispatch() -> None:
    rt = Runtime()
    rt.register("sync", SyncEcho)
    rt.register("rec", Recorder)
    assert await rt.send(Ping(4), to=AgentId("sync")) == Pong(40)
    assert await rt.send(SubPing(5), to=AgentId("sync")) == Pong(50)  # via Ping's handler
    assert await rt.send(Ping(1), to=AgentId("rec", "x")) == 1
    assert await rt.send(Note("hi"), to=AgentId("rec", "x")) == 2
    await rt.stop()


@uv
async def test_message_without_handler_is_undeliverable() -> None:
    rt = Runtime()
    rt.register("sync", SyncEcho)
    with pytest.raises(UndeliverableError, match="no handler for Note"):
        await rt.send(Note("x"), to=AgentId("sync"))
    await rt.stop()


def test_handler_declaration_errors() -> None:
    with pytest.raises(TypeError, match="both on_a and on_b handle Ping"):

        class Twice(Agent):
            @handler
            async def on_a(self, msg: Ping, ctx: engine.Context) -> None: ...

            @handler
            async def on_b(self, msg: Ping, ctx: engine.Context) -> None: ...

    with pytest.raises(TypeError, match="needs a message-class annotation"):

        class Bare(Agent):
            @handler
            async def on_a(self, msg, ctx):  # type: ignore[no-untyped-def]
                ...

    with pytest.raises(TypeError, match="must take"):

        class Short(Agent):
            @handler
            async def on_a(self) -> None: ...

    with pytest.raises(TypeError, match="expected a message class"):

        class Weird(Agent):
            @handler
            async def on_a(self, msg: list[int], ctx: engine.Context) -> None: ...

    with pytest.raises(TypeError, match="expects a function"):
        handler(42)  # type: ignore[call-overload]

    with pytest.raises(TypeError, match="type_name must be a non-empty string"):

        class NoName(Agent):
            type_name = ""


def test_type_name_and_override_of_handlers() -> None:
    class Base(Agent):
        @handler
        async def on_ping(self, msg: Ping, ctx: engine.Context) -> int:
            return 1

    class Child(Base):
        type_name = "kid"

        async def on_ping(self, msg: Ping, ctx: engine.Context) -> int:  # not a handler now
            return 2

    assert Base.type_name == "base"
    assert Child.type_name == "kid"
    assert Base.route_for(Ping) is not None
    assert Child.route_for(Ping) is None


# -- lifecycle -------------------------------------------------------------------


@uv
async def test_lazy_creation_on_start_and_on_stop() -> None:
    rt = Runtime()
    rt.register("rec", Recorder)
    assert rt.agent_count == 0
    await rt.send(Ping(1), to=AgentId("rec", "a"))
    assert rt.agents() == [AgentId("rec", "a")]
    assert Recorder.journal[0] == ("start", AgentId("rec", "a"))
    await rt.stop()
    assert Recorder.journal[-1] == ("stop", AgentId("rec", "a"))
    with pytest.raises(UndeliverableError, match="stopped"):
        await rt.send(Ping(1), to=AgentId("rec", "a"))


@uv
async def test_spawn_and_spawn_many_in_dependency_order() -> None:
    rt = Runtime()
    rt.register("rec", Recorder)
    a, b, c, d = (AgentId("rec", k) for k in "abcd")
    agent = await rt.spawn(a)
    assert await rt.spawn(a) is agent  # idempotent
    spawned = await rt.spawn_many([Spawn(d, needs=(b, c)), Spawn(c, needs=(b,)), b])
    assert [x.id for x in spawned] == [d, c, b]
    starts = [x[1] for x in Recorder.journal if x[0] == "start"]
    assert starts == [a, b, c, d]
    await rt.stop()


@uv
async def test_spawn_many_bad_input() -> None:
    rt = Runtime()
    rt.register("rec", Recorder)
    a, b = AgentId("rec", "a"), AgentId("rec", "b")
    with pytest.raises(CycleError, match="dependency cycle"):
        await rt.spawn_many([Spawn(a, needs=(b,)), Spawn(b, needs=(a,))])
    with pytest.raises(UndeliverableError, match="neither live nor in specs"):
        await rt.spawn_many([Spawn(a, needs=(AgentId("rec", "zz"),))])
    with pytest.raises(UndeliverableError, match="no agent type 'nope'"):
        await rt.spawn_many([AgentId("nope")])
    with pytest.raises(TypeError, match="AgentId or Spawn"):
        await rt.spawn_many(["rec/a"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="expects an AgentId"):
        await rt.spawn("rec/a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Spawn needs an AgentId id and AgentId needs"):
        await rt.spawn_many([Spawn(a, needs=("rec/b",))])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected an AgentId, got str"):
        await rt.evict("rec/a")  # type: ignore[arg-type]
    assert rt.agent_count == 0
    await rt.stop()


class FailingStart(Agent):
    async def on_start(self) -> None:
        raise RuntimeError("no database")

    @handler
    async def on_ping(self, msg: Ping, ctx: engine.Context) -> int:
        return 1


@uv
async def test_failing_on_start_is_a_remote_error_and_not_registered() -> None:
    rt = Runtime()
    rt.register("bad", FailingStart)
    with pytest.raises(RemoteError, match="RuntimeError: no database"):
        await rt.send(Ping(1), to=AgentId("bad"))
    assert rt.agent_count == 0
    await rt.stop()


@uv
async def test_eviction_bounds_registry_and_recreates() -> None:
    rt = Runtime(max_agents=8)
    rt.register("rec", Recorder)
    for i in range(40):
        assert await rt.send(Ping(i), to=AgentId("rec", str(i))) == 1
    assert rt.agent_count <= 8
    await asyncio.sleep(0)  # on_stop of evicted agents runs in the background
    await asyncio.sleep(0)
    stopped = {x[1] for x in Recorder.journal if x[0] == "stop"}
    assert AgentId("rec", "0") in stopped
    # Recreated with fresh state on the next message.
    assert await rt.send(Ping(0), to=AgentId("rec", "0")) == 1
    assert await rt.send(Ping(0), to=AgentId("rec", "0")) == 2
    assert await rt.evict(AgentId("rec", "0")) is True
    assert await rt.evict(AgentId("rec", "0")) is False
    assert rt.get(AgentId("rec", "0")) is None
    await rt.stop()


@uv
async def test_busy_agent_is_not_evicted() -> None:
    rt = Runtime()
    rt.register("echo", Echo)
    task = asyncio.ensure_future(rt.send(Slow(30), to=AgentId("echo")))
    await until(lambda: rt.stats()["busy_agents"] == 1)
    assert await rt.evict(AgentId("echo")) is False
    task.cancel()  # the handler ends with its sender
    with pytest.raises(asyncio.CancelledError):
        await task
    await rt.idle()
    assert await rt.evict(AgentId("echo")) is True
    await rt.stop()


# -- messaging -------------------------------------------------------------------


@uv
async def test_one_message_at_a_time_in_order_unless_concurrent() -> None:
    rt = Runtime()
    rt.register("gauge", Gauge)
    to = AgentId("gauge")
    replies = await asyncio.gather(*(rt.send(Ping(i), to=to) for i in range(50)))
    assert replies == list(range(50))
    agent = rt.get(to)
    assert isinstance(agent, Gauge)
    assert agent.peak == 1
    assert agent.order == list(range(50))
    peaks = await asyncio.gather(*(rt.send(Note("x"), to=to) for _ in range(5)))
    assert max(peaks) > 1  # concurrent handler overlaps
    await rt.stop()


@uv
async def test_many_concurrent_senders_get_their_own_replies() -> None:
    rt = Runtime()
    rt.register("gauge", Gauge)
    rt.register("echo", Echo)
    n = 400
    gauge = await asyncio.gather(*(rt.send(Ping(i), to=AgentId("gauge")) for i in range(n)))
    assert gauge == list(range(n))
    mixed = await rt.send_many(
        [(Ping(i), AgentId("echo", str(i % 7))) for i in range(n)], timeout=5
    )
    assert mixed == [Pong(i + 1) for i in range(n)]
    await rt.stop()


@uv
async def test_handler_exception_becomes_remote_error_and_runtime_continues() -> None:
    rt = Runtime()
    rt.register("echo", Echo)
    to = AgentId("echo")
    with pytest.raises(RemoteError) as info:
        await rt.send(Boom("kaput"), to=to)
    assert info.value.type_name == "ValueError"
    assert info.value.message == "kaput"
    assert isinstance(info.value.__cause__, ValueError)
    # queued path: the agent is busy, so these go through the mailbox
    slow = asyncio.ensure_future(rt.send(Slow(0.01), to=to))
    await asyncio.sleep(0)
    results = await asyncio.gather(
        rt.send(Boom("queued"), to=to), rt.send(Ping(1), to=to), return_exceptions=True
    )
    assert isinstance(results[0], RemoteError) and results[0].message == "queued"
    assert results[1] == Pong(2)
    assert await slow == "slept"
    assert await rt.send(Ping(2), to=to) == Pong(3)
    await rt.stop()


@uv
async def test_remote_error_passes_through_nested_sends() -> None:
    rt = Runtime()
    rt.register("echo", Echo)
    rt.register("relay", Relay)

    class Nested(Agent):
        @handler
        async def on_boom(self, msg: Boom, ctx: engine.Context) -> None:
            await ctx.send(msg, to=AgentId("echo"))

    rt.register("nested", Nested)
    assert await rt.send(Ping(1), to=AgentId("relay", "k")) == Pong(3)
    with pytest.raises(RemoteError) as info:
        await rt.send(Boom("deep"), to=AgentId("nested"))
    assert (info.value.type_name, info.value.message) == ("ValueError", "deep")
    await rt.stop()


@uv
async def test_unregistered_type_and_bad_targets() -> None:
    rt = Runtime()
    rt.register("echo", Echo)
    with pytest.raises(UndeliverableError, match=r"no agent type 'ghost' .*registered: echo"):
        await rt.send(Ping(1), to=AgentId("ghost"))
    with pytest.raises(TypeError, match="must be an AgentId"):
        await rt.send(Ping(1), to="echo/a")  # type: ignore[arg-type]
    for bad in (0, -1, "1", True, float("nan")):
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            await rt.send(Ping(1), to=AgentId("echo"), timeout=bad)  # type: ignore[arg-type]
    await rt.stop()


@uv
async def test_timeout_cancels_handler_inline_and_queued() -> None:
    rt = Runtime()
    rt.register("c", Canceller)
    to = AgentId("c")
    with pytest.raises(DeadlineExceeded, match=r"did not reply to Slow within 0\.02s"):
        await rt.send(Slow(5), to=to, timeout=0.02)
    assert Canceller.cancelled == [to]
    # queued: first request occupies the agent, the second times out while running
    first = asyncio.ensure_future(rt.send(Slow(0.02), to=to))
    await asyncio.sleep(0)
    with pytest.raises(DeadlineExceeded):
        await rt.send(Slow(5), to=to, timeout=0.05)
    assert await first == "done"
    await rt.idle()  # the running handler sees its cancellation on the next loop turn
    assert Canceller.cancelled == [to, to]
    assert await rt.send(Ping(3), to=to) == Pong(3)  # the drain task survived
    await rt.idle()
    await rt.stop()


@uv
async def test_cancelling_the_sender_cancels_the_handler() -> None:
    rt = Runtime()
    rt.register("c", Canceller)
    to = AgentId("c")
    inline = asyncio.ensure_future(rt.send(Slow(30), to=to))
    await until(lambda: rt.stats()["busy_agents"] == 1)
    queued = asyncio.ensure_future(rt.send(Slow(30), to=to))
    never = asyncio.ensure_future(rt.send(Slow(30), to=to))
    await until(lambda: rt.stats()["queued"] == 2)
    never.cancel()  # still in the mailbox: must never run
    inline.cancel()
    await until(lambda: Canceller.cancelled == [to] and rt.stats()["busy_agents"] == 1)
    queued.cancel()  # now running in the drain task
    for task in (inline, queued, never):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert Canceller.cancelled == [to, to]
    assert await rt.send(Ping(7), to=to, timeout=10) == Pong(7)
    await rt.idle()
    await rt.stop()


@uv
async def test_mailbox_reject_policy() -> None:
    rt = Runtime()
    rt.register("echo", Echo, mailbox=2, policy="reject")
    to = AgentId("echo")
    busy = asyncio.ensure_future(rt.send(Slow(30), to=to))
    await until(lambda: rt.stats()["busy_agents"] == 1)
    queued = [asyncio.ensure_future(rt.send(Ping(i), to=to)) for i in range(2)]
    await until(lambda: rt.stats()["queued"] == 2)
    with pytest.raises(MailboxFull, match=r"mailbox of echo/default is full \(2 messages\)"):
        await rt.send(Ping(9), to=to)
    busy.cancel()  # frees the agent: the queued ones run
    assert await asyncio.gather(*queued) == [Pong(1), Pong(2)]
    await rt.stop()


@uv
async def test_mailbox_block_policy_applies_backpressure() -> None:
    rt = Runtime(mailbox=1)
    rt.register("gauge", Gauge)
    to = AgentId("gauge")
    tasks = [asyncio.ensure_future(rt.send(Ping(i), to=to)) for i in range(6)]
    await asyncio.sleep(0)
    agent = rt.get(to)
    assert agent is not None and agent._mb is not None
    assert len(agent._mb) <= 1  # senders wait instead of overfilling
    assert await asyncio.gather(*tasks) == list(range(6))
    # a blocked sender that times out gives up cleanly
    first = asyncio.ensure_future(rt.send(Ping(100), to=to))
    second = asyncio.ensure_future(rt.send(Ping(101), to=to))
    await asyncio.sleep(0)
    with pytest.raises(DeadlineExceeded):
        await rt.send(Ping(102), to=to, timeout=0.0001)
    assert await asyncio.gather(first, second) == [100, 101]
    await rt.stop()


def test_bad_runtime_and_register_arguments() -> None:
    for kwargs in (
        {"mailbox": 0},
        {"mailbox": 1.5},
        {"policy": "drop"},
        {"max_agents": 0},
        {"origin": ""},
    ):
        with pytest.raises(ValueError):
            Runtime(**kwargs)  # type: ignore[arg-type]
    rt = Runtime()
    rt.register("echo", Echo)
    with pytest.raises(ValueError, match="already registered"):
        rt.register("echo", Echo)
    for name in ("", "a/b", 3):
        with pytest.raises(ValueError, match="agent type must be"):
            rt.register(name, Echo)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be callable"):
        rt.register("x", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"not an engine\.Agent subclass"):
        rt.register("x", dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mailbox policy"):
        rt.register("x", Echo, policy="maybe")  # type: ignore[arg-type]


@uv
async def test_factory_returning_non_agent() -> None:
    rt = Runtime()
    rt.register("odd", lambda: object())  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match=r"returned object, not an engine\.Agent"):
        await rt.send(Ping(1), to=AgentId("odd"))

    class NeedsArgs(Agent):
        def __init__(self, db: str) -> None:
            self.db = db

    rt.register("needy", NeedsArgs)
    with pytest.raises(UndeliverableError, match="cannot create needy/default: its factory raised"):
        await rt.send(Ping(1), to=AgentId("needy"))
    assert rt.agent_count == 0
    await rt.stop()


# -- publish ---------------------------------------------------------------------


@uv
async def test_publish_fans_out_with_key_derivation() -> None:
    rt = Runtime()
    rt.register("rec", Recorder)
    rt.register("sync", SyncEcho)
    rt.subscribe("rec", topic="orders.*")  # key = topic source
    rt.subscribe("rec", topic="orders.#", key="audit")  # fixed key
    rt.subscribe("rec", topic="orders.eu", key=lambda t, m: f"n{m.n}")  # from the message
    rt.subscribe("sync", topic="notes")  # SyncEcho has no Note handler: skipped
    sender = AgentId("client")
    assert await rt.publish(Ping(7), topic=TopicId("orders.eu", "shop1"), sender=sender) == 3
    assert await rt.publish(Ping(8), topic="orders") == 1  # only '#' matches zero segments
    assert await rt.publish(Note("x"), topic="notes") == 0
    assert await rt.publish(Note("x"), topic="nobody.listens") == 0
    await rt.idle()
    got = sorted((str(e[1][0]), e[1][1].n, e[1][2].type) for e in Recorder.journal if e[0] == "msg")
    assert got == [
        ("rec/audit", 7, "orders.eu"),
        ("rec/audit", 8, "orders"),
        ("rec/n7", 7, "orders.eu"),
        ("rec/shop1", 7, "orders.eu"),
    ]
    senders = {e[1][3] for e in Recorder.journal if e[0] == "msg" and e[1][1].n == 7}
    assert senders == {sender}
    await rt.stop()


@uv
async def test_subscription_bad_input_and_unsubscribe() -> None:
    rt = Runtime()
    rt.register("rec", Recorder)
    with pytest.raises(UndeliverableError, match="unregistered agent type 'nope'"):
        rt.subscribe("nope", topic="a")
    with pytest.raises(RoutingError):
        rt.subscribe("rec", topic="a..b")
    with pytest.raises(TypeError, match="topic pattern must be a str"):
        rt.subscribe("rec", topic=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be a str or a function"):
        rt.subscribe("rec", topic="a", key=5)  # type: ignore[arg-type]
    rt.subscribe("rec", topic="k", key=lambda t, m: 42)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match=r"returned int, expected str"):
        await rt.publish(Ping(1), topic="k")
    sub = rt.subscribe("rec", topic="a")
    assert await rt.publish(Ping(1), topic="a") == 1
    rt.unsubscribe(sub)
    assert await rt.publish(Ping(1), topic="a") == 0
    with pytest.raises(RoutingError, match="unknown subscription"):
        rt.unsubscribe(sub.id)
    with pytest.raises(TypeError, match="topic must be a str or TopicId"):
        await rt.publish(Ping(1), topic=3)  # type: ignore[arg-type]
    with pytest.raises(RoutingError):
        await rt.publish(Ping(1), topic="a..b")
    await rt.stop()


@uv
async def test_publish_handler_failure_is_logged_and_others_continue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = Runtime()
    rt.register("echo", Echo)
    rt.register("rec", Recorder)
    rt.subscribe("echo", topic="t")
    rt.subscribe("rec", topic="t")
    errors: list[Any] = []
    rt.hooks.add("on_error", lambda ctx, msg, exc: errors.append(type(exc).__name__))
    with caplog.at_level(logging.ERROR, logger="engine.runtime"):
        await rt.publish_many([(Boom("pub"), "t"), (Ping(1), "t")])
        await rt.stop_when_idle()
    assert errors == ["ValueError"]
    assert "failed on published Boom" in caplog.text
    assert [e[1][1] for e in Recorder.journal if e[0] == "msg"] == [Ping(1)]


@uv
async def test_publish_reject_policy_reports_full_mailboxes() -> None:
    rt = Runtime()
    rt.register("echo", Echo, mailbox=1, policy="reject")
    rt.subscribe("echo", topic="t")
    assert await rt.publish(Ping(1), topic="t") == 1
    with pytest.raises(MailboxFull, match="echo/default"):
        await rt.publish(Ping(2), topic="t")
    await rt.stop_when_idle()


@uv
async def test_stop_when_idle_waits_for_queued_work() -> None:
    rt = Runtime()
    rt.register("gauge", Gauge)
    rt.subscribe("gauge", topic="g")
    for i in range(20):
        await rt.publish(Ping(i), topic="g")
    agent = rt.get(AgentId("gauge"))
    await rt.stop_when_idle()
    assert isinstance(agent, Gauge)
    assert agent.order == list(range(20))


# -- context, hooks, middleware --------------------------------------------------


@uv
async def test_context_headers() -> None:
    rt = Runtime(origin="node-1")
    seen: list[Any] = []

    class Probe(Agent):
        @handler
        async def on_ping(self, msg: Ping, ctx: engine.Context) -> None:
            seen.append((ctx.agent_id, ctx.sender, ctx.message_id, ctx.topic, repr(ctx)))
            if msg.n:
                await ctx.send(Ping(0), to=AgentId("probe", "inner"))
                await ctx.publish(Ping(0), topic="p")

    rt.register("probe", Probe)
    rt.subscribe("probe", topic="p", key="sub")
    await rt.send(Ping(1), to=AgentId("probe", "outer"))
    await rt.idle()
    outer, inner, sub = seen
    assert outer[0] == AgentId("probe", "outer") and outer[1] is None
    assert outer[2].origin == "node-1"
    assert inner[1] == AgentId("probe", "outer") and inner[2].seq > outer[2].seq
    assert sub[1] == AgentId("probe", "outer") and sub[3] == TopicId("p")
    assert "on_ping" in outer[4]
    await rt.stop()


@uv
async def test_hooks_are_called_with_their_arguments() -> None:
    rt = Runtime()
    events: list[Any] = []
    h = rt.hooks
    h.add("on_spawn", lambda a: events.append(("spawn", a.id)))
    h.add("on_stop", lambda a: events.append(("stop", a.id)))
    h.add("pre_handler", lambda c, m: events.append(("pre", c.route.name, m)))
    h.add("post_handler", lambda c, m, r, s: events.append(("post", r, s >= 0)))
    h.add("on_error", lambda c, m, e: events.append(("error", type(e).__name__)))
    rt.register("echo", Echo)
    await rt.send(Ping(1), to=AgentId("echo"))
    with pytest.raises(RemoteError):
        await rt.send(Boom("x"), to=AgentId("echo"))
    await rt.stop()
    assert events == [
        ("spawn", AgentId("echo")),
        ("pre", "on_ping", Ping(1)),
        ("post", Pong(2), True),
        ("pre", "on_boom", Boom("x")),
        ("error", "ValueError"),
        ("stop", AgentId("echo")),
    ]


@uv
async def test_hook_registry_bad_input_and_removal() -> None:
    rt = Runtime()
    with pytest.raises(ValueError, match="unknown hook 'pre_send'"):
        rt.hooks.add("pre_send", print)
    with pytest.raises(TypeError, match="must be callable"):
        rt.hooks.add("pre_handler", 3)  # type: ignore[arg-type]
    calls: list[int] = []
    remove = rt.hooks.add("pre_handler", lambda c, m: calls.append(1))
    rt.register("echo", Echo)
    await rt.send(Ping(1), to=AgentId("echo"))
    remove()
    await rt.send(Ping(1), to=AgentId("echo"))
    assert calls == [1]
    assert rt._plain  # back on the fast path
    with pytest.raises(ValueError, match="is not registered"):
        remove()
    await rt.stop()


@uv
async def test_failing_hooks() -> None:
    rt = Runtime()
    rt.register("echo", Echo)

    def veto(ctx: engine.Context, msg: Any) -> None:
        raise PermissionError("denied")

    def broken_spawn(agent: Agent) -> None:
        raise RuntimeError("hook bug")

    rt.hooks.add("on_spawn", broken_spawn)  # logged, ignored
    rt.hooks.add("pre_handler", veto)  # fails the call
    with pytest.raises(RemoteError, match="PermissionError: denied"):
        await rt.send(Ping(1), to=AgentId("echo"))
    assert rt.agent_count == 1
    await rt.stop()


@uv
async def test_middleware_order_rewrites_and_errors() -> None:
    rt = Runtime()
    rt.register("echo", Echo)
    trail: list[str] = []

    async def outer(ctx: Any, msg: Any, call_next: Any) -> Any:
        trail.append(f"outer:{ctx.kind}")
        result = await call_next(ctx, msg)
        trail.append("outer-done")
        return result

    async def doubler(ctx: Any, msg: Any, call_next: Any) -> Any:
        trail.append("doubler")
        if isinstance(msg, Ping):
            msg = Ping(msg.n * 2)
        return await call_next(ctx, msg)

    async def guard(ctx: Any, msg: Any, call_next: Any) -> Any:
        if isinstance(msg, Ping) and msg.n > 100:
            raise PermissionError("too big")
        return await call_next(ctx, msg)

    rt.use(outer)
    remove = rt.use(doubler)
    rt.use(guard)
    assert rt.middleware == (outer, doubler, guard)
    assert await rt.send(Ping(5), to=AgentId("echo")) == Pong(11)
    assert trail == ["outer:handler", "doubler", "outer-done"]
    with pytest.raises(RemoteError, match="PermissionError: too big"):
        await rt.send(Ping(60), to=AgentId("echo"))
    remove()
    assert await rt.send(Ping(60), to=AgentId("echo")) == Pong(61)
    with pytest.raises(ValueError, match="was already removed"):
        remove()
    with pytest.raises(TypeError, match="middleware must be callable"):
        rt.use(None)  # type: ignore[arg-type]
    await rt.stop()


# -- transport -------------------------------------------------------------------


@uv
async def test_loopback_transport_between_runtimes() -> None:
    from engine.runtime import LoopbackHub, Transport

    hub = LoopbackHub()
    t1, t2 = hub.transport(), hub.transport()
    assert isinstance(t1, Transport)
    async with Runtime(transport=t1) as server, Runtime(transport=t2) as client:
        server.register("echo", Echo)
        server.register("rec", Recorder)
        server.subscribe("rec", topic="remote.*")
        assert await client.send(Ping(1), to=AgentId("echo", "x"), timeout=2) == Pong(2)
        with pytest.raises(RemoteError) as info:
            await client.send(Boom("far"), to=AgentId("echo"))
        assert (info.value.type_name, info.value.message) == ("ValueError", "far")
        with pytest.raises(UndeliverableError, match="no runtime serves agent type 'ghost'"):
            await client.send(Ping(1), to=AgentId("ghost"))
        with pytest.raises(DeadlineExceeded):
            await client.send(Slow(5), to=AgentId("echo", "slow"), timeout=0.05)
        assert await client.publish(Note("hello"), topic="remote.eu") == 0  # none locally
        await until(lambda: Recorder.journal)
        await server.idle()
        assert [e[1][1] for e in Recorder.journal if e[0] == "msg"] == [Note("hello")]


def test_run_uses_uvloop() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert engine.run(which()).startswith("uvloop")


# -- one-way post and the transport's entry point --------------------------------


@uv
async def test_post_is_one_way_and_ordered() -> None:
    rt = Runtime()
    rt.register("gauge", Gauge)
    rt.register("rec", Recorder)
    for i in range(5):
        await rt.post(Ping(i), to=AgentId("gauge"))
    await rt.post(Note("n"), to=AgentId("gauge"))  # concurrent handler: runs beside
    await rt.idle()
    agent = rt.get(AgentId("gauge"))
    assert isinstance(agent, Gauge) and agent.order == [0, 1, 2, 3, 4]
    with pytest.raises(UndeliverableError, match="no agent type 'ghost'"):
        await rt.post(Ping(1), to=AgentId("ghost"))
    with pytest.raises(TypeError, match="must be an AgentId"):
        await rt.post(Ping(1), to="rec")  # type: ignore[arg-type]
    with pytest.raises(UndeliverableError, match="no handler for Boom"):
        await rt.post(Boom("x"), to=AgentId("rec"))
    await rt.stop()


@uv
async def test_inbound_envelopes_are_run_and_each_is_answered_through_the_transport() -> None:
    from engine.messages import Envelope, ErrorInfo, Kind, MessageId, decode_payload, wire_name
    from engine.messages import encode_payload as enc

    class Capture:
        """A transport that keeps what the runtime sends (the answers to deliveries)."""

        def __init__(self) -> None:
            self.sent: dict[MessageId, Envelope] = {}

        async def start(self, host: Any) -> None: ...

        def send(self, envelope: Envelope) -> None:
            assert envelope.correlation is not None
            self.sent[envelope.correlation] = envelope

        def announce(self, agent_type: str) -> None: ...

        def subscribe(self, pattern: str) -> None: ...

        async def close(self) -> None: ...

    out = Capture()
    rt = Runtime(origin="host", transport=out)
    rt.register("echo", Echo)
    rt.register("rec", Recorder)
    rt.subscribe("rec", topic="news.*")
    rt.subscribe("rec", topic="news.*", key="again")
    assert rt.types == ["echo", "rec"]
    assert rt.subscriptions == ["news.*"]
    client = AgentId("client", "c")

    def env(kind: Kind, message: Any, seq: int, **kw: Any) -> Envelope:
        return Envelope(
            MessageId("peer", seq),
            kind,
            sender=client,
            payload_type=wire_name(type(message)),
            payload=enc(message),
            **kw,
        )

    async def handle(envelope: Envelope) -> Envelope:
        """Deliver as a transport does (from a loop callback), wait for the answer."""
        asyncio.get_running_loop().call_soon(rt.deliver, envelope)
        await until(lambda: envelope.id in out.sent)
        return out.sent[envelope.id]

    reply = await handle(env(Kind.SEND, Ping(1), 1, recipient=AgentId("echo", "x")))
    assert reply.kind is Kind.REPLY
    assert reply.correlation == MessageId("peer", 1) and reply.recipient == client
    assert reply.payload_type == "rt.Pong" and decode_payload(reply.payload, Pong) == Pong(2)

    error = await handle(env(Kind.SEND, Boom("no"), 2, recipient=AgentId("echo")))
    assert error.kind is Kind.ERROR
    assert decode_payload(error.payload, ErrorInfo) == ErrorInfo("ValueError", "no")

    missing = await handle(env(Kind.SEND, Ping(1), 3, recipient=AgentId("ghost")))
    assert missing.kind is Kind.ERROR
    assert decode_payload(missing.payload, ErrorInfo).type_name == "UndeliverableError"

    bogus = Envelope(
        MessageId("peer", 4),
        Kind.SEND,
        recipient=AgentId("echo"),
        payload_type="NoSuchMessage",
        payload=enc(Ping(1)),
    )
    failed = await handle(bogus)
    assert failed.kind is Kind.ERROR
    assert (
        "unknown message type 'NoSuchMessage'" in decode_payload(failed.payload, ErrorInfo).message
    )

    # a PUBLISH is answered by an empty REPLY once handed to its agents here
    for published in (
        env(Kind.PUBLISH, Note("hi"), 5, topic=TopicId("news.eu", "s")),
        env(Kind.PUBLISH, Note("one"), 6, recipient=AgentId("rec", "d")),
    ):
        answer = await handle(published)
        assert answer.kind is Kind.REPLY and answer.recipient == client
    await rt.idle()
    got = sorted((str(e[1][0]), e[1][1].text) for e in Recorder.journal if e[0] == "msg")
    assert got == [("rec/again", "hi"), ("rec/d", "one"), ("rec/s", "hi")]
    await rt.stop()


@uv
async def test_cancel_crosses_the_transport() -> None:
    from engine.runtime import LoopbackHub

    hub = LoopbackHub()
    async with (
        Runtime(transport=hub.transport()) as server,
        Runtime(transport=hub.transport()) as client,
    ):
        server.register("c", Canceller)
        task = asyncio.ensure_future(client.send(Slow(30), to=AgentId("c", "far")))
        await until(lambda: server.stats()["busy_agents"] == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: Canceller.cancelled)
        assert Canceller.cancelled == [AgentId("c", "far")]


@uv
async def test_nested_sends_inherit_the_deadline() -> None:
    rt = Runtime()
    rt.register("echo", Canceller)  # records that the inner request was cancelled
    rt.register("relay", Relay)
    Canceller.cancelled.clear()
    with pytest.raises(DeadlineExceeded):
        await rt.send(Slow(30), to=AgentId("relay", "k"), timeout=0.05)
    await until(lambda: Canceller.cancelled)  # the inner request ended with the outer one
    assert Canceller.cancelled == [AgentId("echo", "k")]
    assert await rt.send(Slow(0.001), to=AgentId("relay", "k"), timeout=10) == "done"

    class Late(engine.Agent):
        @handler
        async def on_ping(self, msg: Ping, ctx: engine.Context) -> Any:
            ctx.deadline = asyncio.get_running_loop().time() - 1  # already passed
            return await ctx.send(msg, to=AgentId("echo"))

    rt.register("late", Late)
    with pytest.raises(DeadlineExceeded, match="deadline of on_ping on late/default passed"):
        await rt.send(Ping(1), to=AgentId("late"))
    await rt.stop()


@uv
async def test_stats_gauges() -> None:
    rt = Runtime()
    rt.register("echo", Echo)
    rt.subscribe("echo", topic="t")
    busy = asyncio.ensure_future(rt.send(Slow(30), to=AgentId("echo")))
    await until(lambda: rt.stats()["busy_agents"] == 1)
    queued = [asyncio.ensure_future(rt.send(Ping(i), to=AgentId("echo"))) for i in range(3)]
    await until(lambda: rt.stats()["queued"] == 3)
    stats = rt.stats()
    assert stats == {
        "agents": 1,
        "agent_types": 1,
        "busy_agents": 1,
        "queued": 3,
        "in_flight": 4,
        "remote_pending": 0,
        "remote_serving": 0,
        "subscriptions": 1,
    }
    busy.cancel()
    await asyncio.gather(busy, *queued, return_exceptions=True)
    assert [q.result() for q in queued] == [Pong(1), Pong(2), Pong(3)]
    assert rt.stats()["in_flight"] == 0 and rt.stats()["queued"] == 0
    await rt.stop()


@uv
async def test_sending_to_itself_while_busy_fails_fast() -> None:
    class Selfish(Agent):
        @handler
        async def on_ping(self, msg: Ping, ctx: engine.Context) -> Any:
            return await ctx.send(Note("me"), to=self.id)

        @handler
        async def on_note(self, msg: Note, ctx: engine.Context) -> str:
            return msg.text

    rt = Runtime()
    rt.register("selfish", Selfish)
    with pytest.raises(RemoteError, match=r"UndeliverableError: .*to itself while busy") as info:
        await rt.send(Ping(1), to=AgentId("selfish"), timeout=1)
    assert isinstance(info.value.__cause__, UndeliverableError)
    await rt.post(Note("fine"), to=AgentId("selfish"))  # one-way to itself is fine
    await rt.stop_when_idle()


@pytest.mark.parametrize("router", ["py", "native"])
def test_publish_on_both_router_twins(router: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.routing import RouterC, RouterPy
    from engine.runtime import _subscriptions

    cls = RouterPy if router == "py" else RouterC
    if cls is None:
        pytest.skip("native router not built")
    monkeypatch.setattr(_subscriptions, "Router", cls)

    @uv
    async def scenario() -> list[str]:
        rt = Runtime()
        rt.register("rec", Recorder)
        assert isinstance(rt._subs._router, cls)
        rt.subscribe("rec", topic="a.*.c", key="star")
        rt.subscribe("rec", topic="a.#", key="hash")
        rt.subscribe("rec", topic="b", key="exact")
        for topic in ("a.b.c", "a", "a.x.y.c", "b", "b.c"):
            await rt.publish(Note(topic), topic=topic)
        await rt.stop_when_idle()
        return sorted(f"{e[1][0].key}:{e[1][1].text}" for e in Recorder.journal if e[0] == "msg")

    assert scenario() == [
        "exact:b",
        "hash:a",
        "hash:a.b.c",
        "hash:a.x.y.c",
        "star:a.b.c",
    ]


@uv
async def test_trace_context_propagates_locally_and_over_the_transport() -> None:
    from engine.runtime import LoopbackHub

    seen: dict[str, str] = {}

    class Traced(Agent):
        @handler
        async def on_ping(self, msg: Ping, ctx: engine.Context) -> int:
            seen[f"{ctx.agent_id}"] = ctx.traceparent
            if msg.n == 0:
                return 0
            await ctx.publish(Note("n"), topic="traced")
            await ctx.post(Note("p"), to=AgentId("rec", "posted"))
            return int(await ctx.send(Ping(msg.n - 1), to=AgentId("traced", str(msg.n - 1))))

    class Spy(Agent):
        @handler
        async def on_note(self, msg: Note, ctx: engine.Context) -> None:
            seen[f"{ctx.agent_id}"] = ctx.traceparent

    async def new_span(ctx: Any, value: Any, call_next: Any) -> Any:
        if ctx.kind == "handler" and ctx.agent_id == AgentId("traced", "2"):
            seen["arrived"] = ctx.traceparent
            ctx.traceparent = "00-" + "b" * 32 + "-" + "c" * 16 + "-01"
        return await call_next(ctx, value)

    hub = LoopbackHub()
    async with Runtime(transport=hub.transport()) as a, Runtime(transport=hub.transport()) as b:
        a.register("traced", Traced)
        a.register("rec", Spy)
        a.subscribe("rec", topic="traced", key="sub")
        a.use(new_span)
        root = "00-" + "a" * 32 + "-" + "1" * 16 + "-01"
        assert await b.send(Ping(2), to=AgentId("traced", "2"), traceparent=root) == 0
        await a.idle()
    assert seen["arrived"] == root  # came over the transport
    child = "00-" + "b" * 32 + "-" + "c" * 16 + "-01"
    assert seen["traced/2"] == child  # the handler runs inside the middleware's span
    assert seen["traced/1"] == child and seen["traced/0"] == child
    assert seen["rec/sub"] == child and seen["rec/posted"] == child


@uv
async def test_handler_that_swallows_cancellation_keeps_the_agent_usable() -> None:
    class Stubborn(Agent):
        @handler
        async def on_slow(self, msg: Slow, ctx: engine.Context) -> str:
            try:
                await asyncio.sleep(msg.seconds)
            except asyncio.CancelledError:
                return "ignored"  # swallows it
            async with asyncio.timeout(1):  # structured timeouts still work afterwards
                await asyncio.sleep(0)
            return "done"

    rt = Runtime()
    rt.register("s", Stubborn)
    to = AgentId("s")
    first = asyncio.ensure_future(rt.send(Slow(0.01), to=to))
    await asyncio.sleep(0)
    with pytest.raises(DeadlineExceeded):
        await rt.send(Slow(5), to=to, timeout=0.03)  # queued, then cancelled while running
    assert await first == "done"
    blocker = asyncio.ensure_future(rt.send(Slow(0.01), to=to))
    await asyncio.sleep(0)
    assert await rt.send(Slow(0.001), to=to, timeout=10) == "done"  # via the drain task
    assert await blocker == "done"
    await rt.stop()


# -- load balancing by type ------------------------------------------------------


@uv
async def test_balanced_type_round_robin_over_live_instances() -> None:
    rt = Runtime()
    rt.register("w", Recorder, balance="round_robin")
    with pytest.raises(UndeliverableError, match="no live instance of 'w'"):
        await rt.send(Ping(0), to=AgentId("w", "*"))
    await rt.spawn_many([AgentId("w", k) for k in ("a", "b", "c")])
    for i in range(9):
        await rt.send(Ping(i), to=AgentId("w", "*"))
    handled = [e[1][0].key for e in Recorder.journal if e[0] == "msg"]
    assert sorted(handled) == sorted("abc" * 3)
    assert {handled.count(k) for k in "abc"} == {3}
    assert await rt.evict(AgentId("w", "b"))
    for i in range(4):
        await rt.send(Ping(i), to=AgentId("w", "*"))
    later = [e[1][0].key for e in Recorder.journal if e[0] == "msg"][9:]
    assert sorted(later) == ["a", "a", "c", "c"]
    await rt.stop()


@uv
async def test_balanced_type_least_outstanding_avoids_busy_instances() -> None:
    rt = Runtime()
    rt.register("echo", Echo, balance="least_outstanding")
    await rt.spawn_many([AgentId("echo", "x"), AgentId("echo", "y")])
    slow = asyncio.ensure_future(rt.send(Slow(30), to=AgentId("echo", "*")))
    await asyncio.sleep(0)
    busy = next(a for a in rt.agents("echo") if rt.get(a)._busy)  # type: ignore[union-attr]
    for _ in range(5):  # all go to the idle one: behind the slow request they would time out
        assert await rt.send(Ping(1), to=AgentId("echo", "*"), timeout=10) == Pong(2)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert busy in (AgentId("echo", "x"), AgentId("echo", "y"))
    with pytest.raises(RoutingError, match="unknown policy 'fastest'"):
        rt.register("other", Echo, balance="fastest")
    await rt.stop()


@uv
async def test_context_envelope_matches_the_wire_headers(
    fake_clock: Callable[..., FakeClock],
) -> None:
    from engine.messages import Kind, decode, decode_payload, encode

    clock = fake_clock(engine.agents)
    got: list[Any] = []

    class Probe(Agent):
        @handler
        async def on_ping(self, msg: Ping, ctx: engine.Context) -> None:
            got.append(ctx.envelope(with_payload=True))
            got.append(ctx.envelope())

    rt = Runtime(origin="o1")
    rt.register("probe", Probe)
    rt.subscribe("probe", topic="t")
    await rt.send(Ping(3), to=AgentId("probe"), timeout=5, traceparent="00-x")
    await rt.publish(Ping(4), topic="t")
    await rt.idle()
    sent, bare, published, _ = got
    assert sent.kind is Kind.SEND and sent.recipient == AgentId("probe")
    assert sent.id.origin == "o1" and sent.traceparent == "00-x"
    assert clock.now < sent.deadline <= clock.now + 5  # UNIX time: what is left of the 5 s
    assert decode_payload(decode(encode(sent)).payload, Ping) == Ping(3)
    assert decode(encode(bare)).payload_type == "rt.Ping"  # headers only, still valid
    assert published.kind is Kind.PUBLISH and published.topic == TopicId("t")
    await rt.stop()


# -- randomized invariants -------------------------------------------------------


class Journal(Agent):
    """Records the order it handles messages in; sleeps a little on odd numbers."""

    log: list[tuple[str, int]] = []

    @handler
    async def on_ping(self, msg: Ping, ctx: engine.Context) -> int:
        if msg.n % 2:
            await asyncio.sleep(0.0005)
        Journal.log.append((self.id.key, msg.n))
        return msg.n


@pytest.mark.parametrize("seed", range(4))
def test_random_mix_keeps_order_and_accounting(seed: int) -> None:
    """Random sends (some timing out or cancelled), publishes and posts on small mailboxes.

    Invariants: every reply is the requester's own; one-way messages from one sender are
    handled in the order sent; nothing runs twice; afterwards nothing is busy or queued.
    """
    import random

    rng = random.Random(seed)
    Journal.log = []

    @uv
    async def scenario() -> None:
        rt = Runtime(mailbox=8)
        rt.register("j", Journal)
        rt.subscribe("j", topic="j.*")
        keys = ["a", "b", "c"]
        requests: list[tuple[int, asyncio.Future[Any]]] = []
        one_way: dict[str, list[int]] = {k: [] for k in keys}
        for n in range(600):
            key = rng.choice(keys)
            op = rng.random()
            if op < 0.5:
                timeout = rng.choice([None, None, 0.05, 0.0005])
                to = AgentId("j", key)
                requests.append(
                    (n, asyncio.ensure_future(rt.send(Ping(n), to=to, timeout=timeout)))
                )
            elif op < 0.75:
                await rt.publish(Ping(n), topic=TopicId(f"j.{key}", key))
                one_way[key].append(n)
            else:
                await rt.post(Ping(n), to=AgentId("j", key))
                one_way[key].append(n)
            if rng.random() < 0.1 and requests:
                rng.choice(requests)[1].cancel()
            if rng.random() < 0.2:
                await asyncio.sleep(0)
        results = await asyncio.gather(*(f for _, f in requests), return_exceptions=True)
        await rt.idle()
        for (n, _), r in zip(requests, results, strict=True):
            assert r == n or isinstance(r, (DeadlineExceeded, asyncio.CancelledError)), (n, r)
        assert rt.stats()["in_flight"] == 0
        for key in keys:
            agent = rt.get(AgentId("j", key))
            assert agent is not None and not agent._busy and not agent._mb
            handled = [n for k, n in Journal.log if k == key]
            assert len(set(handled)) == len(handled), "a message was handled twice"
            mine = set(one_way[key])
            assert [n for n in handled if n in mine] == one_way[key]
        await rt.stop()

    scenario()


@uv
async def test_message_counts() -> None:
    from engine.runtime import LoopbackHub

    hub = LoopbackHub()
    async with (
        Runtime(transport=hub.transport()) as rt,
        Runtime(transport=hub.transport()) as other,
    ):
        rt.register("echo", Echo)
        rt.register("rec", Recorder)
        rt.subscribe("rec", topic="t")
        rt.subscribe("rec", topic="t", key="second")
        for i in range(3):
            await rt.send(Ping(i), to=AgentId("echo"))
        with pytest.raises(RemoteError):
            await rt.send(Boom("x"), to=AgentId("echo"))
        await rt.publish(Ping(1), topic="t")
        await rt.post(Ping(1), to=AgentId("rec"))
        q = rt.start_query(Ping(5), to=AgentId("echo"))
        await q.wait()
        assert await other.send(Ping(1), to=AgentId("echo"), timeout=2) == Pong(2)
        await rt.idle()
        counts = rt.message_counts()
        assert counts == {
            "send": 3 + 1 + 1 + 1,  # direct, the failing one, the query's, the served one
            "publish": 1,
            "delivered": 2,
            "post": 1,
            "remote_send": 0,
            "served": 1,
            "error": 1,
        }
        assert other.message_counts()["remote_send"] == 1
        assert other.message_counts()["send"] == 0


@uv
async def test_deadline_heap_stays_small_and_fires_in_order() -> None:
    from engine.runtime._deadlines import Deadlines

    d = Deadlines()
    me = asyncio.current_task()
    assert me is not None
    loop = asyncio.get_running_loop()
    for _ in range(10_000):  # finished requests leave no lasting entries
        d.done(d.add(loop.time() + 60, me))
    assert len(d) == 0 and len(d._heap) <= 70

    fired: list[str] = []

    async def sleeper(name: str) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            fired.append(name)
            raise

    tasks = {n: asyncio.ensure_future(sleeper(n)) for n in ("late", "early", "never")}
    await asyncio.sleep(0)
    late = d.add(loop.time() + 0.03, tasks["late"])
    early = d.add(loop.time() + 0.01, tasks["early"])  # re-arms the timer earlier
    never = d.add(loop.time() + 0.02, tasks["never"])
    d.done(never)
    await asyncio.wait([tasks["early"], tasks["late"]], timeout=30)
    assert fired == ["early", "late"] and early[3] and late[3] and not never[3]
    tasks["never"].cancel()
    d.close()
    assert len(d) == 0


def test_runtime_survives_a_new_event_loop() -> None:
    rt = Runtime()
    rt.register("echo", Echo)

    async def once() -> Any:
        return await rt.send(Ping(1), to=AgentId("echo"), timeout=10)

    assert engine.run(once()) == Pong(2)
    assert asyncio.run(once()) == Pong(2)  # timers re-armed on the new loop
