"""Hot-path probes for the instruction-count gate (``engine bench --instructions``).

Each probe is ``setup() -> run(k)``: setup builds the state (not counted), ``run(k)`` does
``k`` operations, each one batch of the native hot path (``runtime.*``: one batch of
in-process deliveries on one event loop, made in setup). The gate counts instructions of
``run(k)`` under ``valgrind --tool=callgrind`` and divides by ``k``; the counts are
deterministic, so base and head compare exactly. Keep probes small: callgrind runs ~50x
slower than native.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np

from engine.agents import Agent, Context, handler
from engine.messages import AgentId, Message
from engine.routing import KIND_DIRECT, KIND_TOPIC, KIND_TYPE, Router
from engine.runtime import Runtime
from engine.scheduling import Scheduler

Run = Callable[[int], object]
BATCH = 1000


def _router() -> tuple[Router, np.ndarray]:
    r = Router()
    for t in range(20):
        for k in range(5):
            r.add_agent(AgentId(f"type{t}", f"k{k}"))
    for i in range(200):
        r.subscribe(f"region{i % 10}.*.event{i % 7}", subscriber=i)
        r.subscribe(f"region{i % 10}.#", subscriber=1000 + i)
    topics = [f"region{i % 10}.node{i % 13}.event{i % 7}" for i in range(BATCH)]
    return r, r.topic_handles(topics)


def router_match_many() -> Run:
    r, handles = _router()
    return lambda k: [r.match_many(handles) for _ in range(k)]


def router_route_many() -> Run:
    r, handles = _router()
    kinds = np.array(
        [(KIND_DIRECT, KIND_TYPE, KIND_TOPIC)[i % 3] for i in range(BATCH)], dtype=np.uint8
    )
    direct = [r.handle(AgentId(f"type{i % 20}", f"k{i % 5}")) for i in range(BATCH)]
    types = [r.type_handle(f"type{i % 20}") for i in range(BATCH)]
    targets = np.array(
        [(direct[i], types[i], int(handles[i]))[i % 3] for i in range(BATCH)], dtype=np.int64
    )

    return lambda k: [r.route_many(kinds, targets) for _ in range(k)]


def scheduler_push_pop() -> Run:
    s = Scheduler()
    ids = np.arange(BATCH, dtype=np.int64)
    prio = (ids % 7).astype(np.int32)
    deadlines = np.full(BATCH, np.inf)

    def run(k: int) -> None:
        for _ in range(k):
            s.push_many(ids, prio, deadlines)
            s.complete_many(s.pop_ready(BATCH))

    return run


# -- the runtime: one batch of in-process deliveries -------------------------------------
RT_BATCH = 200


class _Ping(Message, tag="hotpath.Ping"):
    n: int


class _Echo(Agent):
    __slots__ = ()

    @handler
    async def on_ping(self, msg: _Ping, ctx: Context) -> _Ping:
        return msg


Batch = Callable[[Runtime], Awaitable[None]]


_open: list[tuple[asyncio.AbstractEventLoop, Runtime]] = []


def close_runtimes() -> None:
    """Stop the runtimes the ``runtime.*`` probes made and close their loops (a leaked
    loop is a ResourceWarning, which pytest's ``filterwarnings = error`` turns into a
    failure)."""
    while _open:
        loop, rt = _open.pop()
        loop.run_until_complete(rt.stop())
        loop.close()


def _loop_run(batch: Batch) -> Run:
    loop = asyncio.new_event_loop()  # asyncio's own loop: its Python code is counted alike
    rt = Runtime()
    _open.append((loop, rt))
    rt.register("echo", _Echo)
    for i in range(10):
        rt.subscribe("echo", topic="pings", key=f"s{i}")
    rt.subscribe("echo", topic="one", key="one")

    async def warm() -> None:
        await rt.send(_Ping(0), to=AgentId("echo", "a"))
        await rt.publish(_Ping(0), topic="pings")
        await rt.idle()

    loop.run_until_complete(warm())
    return lambda k: [loop.run_until_complete(batch(rt)) for _ in range(k)]


def runtime_send() -> Run:
    """Sequential send/reply to an idle agent (the inline fast path)."""
    p, to = _Ping(1), AgentId("echo", "a")

    async def batch(rt: Runtime) -> None:
        send = rt.send
        for _ in range(RT_BATCH):
            await send(p, to=to)

    return _loop_run(batch)


def runtime_send_timeout() -> Run:
    """Sequential send/reply with a deadline (one loop timer for all: _deadlines.py)."""
    p, to = _Ping(1), AgentId("echo", "a")

    async def batch(rt: Runtime) -> None:
        send = rt.send
        for _ in range(RT_BATCH):
            await send(p, to=to, timeout=60.0)

    return _loop_run(batch)


def runtime_send_hooks() -> Run:
    """Sequential send/reply through no-op pre/post handler hooks (not a plain runtime)."""
    p, to = _Ping(1), AgentId("echo", "a")

    async def batch(rt: Runtime) -> None:
        if not rt.hooks.pre_handler:
            rt.hooks.add("pre_handler", _pre)
            rt.hooks.add("post_handler", _post)
        send = rt.send
        for _ in range(RT_BATCH):
            await send(p, to=to)

    return _loop_run(batch)


def _pre(ctx: Context, message: object) -> None:
    pass


def _post(ctx: Context, message: object, result: object, seconds: float) -> None:
    pass


def runtime_inflight() -> Run:
    """100 concurrent senders to 10 agents: mailboxes, drains, futures."""
    p = _Ping(1)
    targets = [AgentId("echo", f"k{i % 10}") for i in range(100)]

    async def one(rt: Runtime, to: AgentId) -> None:
        for _ in range(RT_BATCH // 100):
            await rt.send(p, to=to)

    async def batch(rt: Runtime) -> None:
        await asyncio.gather(*(one(rt, to) for to in targets))

    return _loop_run(batch)


def runtime_publish() -> Run:
    """Publish to 10 subscribers, then drain every mailbox."""
    p = _Ping(1)

    async def batch(rt: Runtime) -> None:
        for _ in range(RT_BATCH // 10):
            await rt.publish(p, topic="pings")
        await rt.idle()

    return _loop_run(batch)


def runtime_publish_one() -> Run:
    """Publish to one subscriber, then drain its mailbox."""
    p = _Ping(1)

    async def batch(rt: Runtime) -> None:
        for _ in range(RT_BATCH):
            await rt.publish(p, topic="one")
        await rt.idle()

    return _loop_run(batch)


PROBES: dict[str, Callable[[], Run]] = {
    "router.match_many": router_match_many,
    "router.route_many": router_route_many,
    "scheduler.push_pop_complete": scheduler_push_pop,
    "runtime.send": runtime_send,
    "runtime.send_timeout": runtime_send_timeout,
    "runtime.send_hooks": runtime_send_hooks,
    "runtime.inflight": runtime_inflight,
    "runtime.publish": runtime_publish,
    "runtime.publish_one": runtime_publish_one,
}
