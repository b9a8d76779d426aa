"""The in-process runtime: agents, mailboxes, send/publish, hooks, queries, transport.

Delivery model. Every agent instance has a lazily created mailbox (a deque) and a busy
flag. ``send`` to an idle agent runs the handler right in the caller's task — no queue,
no future, no task switch — which is why a sequential round trip costs a few
microseconds. A message for a busy agent goes into its bounded mailbox with a future;
whoever frees the agent starts one drain task that works through the mailbox in order.
``publish`` always queues (fire and forget) and drains likewise. Handlers marked
``concurrent`` skip the mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from engine.agents import Agent, Context, Route
from engine.errors import (
    DeadlineExceeded,
    EngineError,
    MailboxFull,
    QueryCancelled,
    RemoteError,
    RoutingError,
    UndeliverableError,
)
from engine.messages import (
    AgentId,
    Envelope,
    TopicId,
)
from engine.observe.tracing import current_traceparent
from engine.routing import Router, RouterPy
from engine.runtime._deadlines import Deadlines
from engine.runtime._hooks import Hooks, Middleware, compose
from engine.runtime._queries import Query, QueryState, current_query
from engine.runtime._remote import Remote
from engine.runtime._spawn import Spawn, levels
from engine.runtime._subscriptions import KeyFn, Subscription, Subscriptions
from engine.runtime._transport import Transport

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from engine._native._router import Router as _RouterC
    from engine.observe.metrics import Metrics
    from engine.observe.server import ObserveServer

__all__ = ["Policy", "Runtime", "Spawn"]

log = logging.getLogger("engine.runtime")
_clock = time.perf_counter

Policy = Literal["block", "reject"]
Factory = Callable[[], Agent]

#: Default mailbox capacity (messages) per agent instance.
DEFAULT_MAILBOX: Final = 1024
_POLICIES: Final = ("block", "reject")


class _Type:
    """Registration of one agent type."""

    __slots__ = ("balanced", "capacity", "cls", "factory", "instances", "name", "policy")

    def __init__(
        self, name: str, factory: Factory, cls: type[Agent] | None, capacity: int, policy: str
    ) -> None:
        self.name = name
        self.factory = factory
        self.cls = cls
        self.capacity = capacity
        self.policy = policy
        self.instances: dict[str, Agent] = {}
        self.balanced = False  # instances tracked in the runtime's balancer (key "*")


async def _terminal_async(ctx: Context, message: Any) -> Any:
    route = ctx.route
    if route.is_async:
        return await route.fn(ctx.agent, message, ctx)
    return route.fn(ctx.agent, message, ctx)


def _remote(exc: BaseException) -> BaseException:
    """What the sender sees when a handler raised ``exc``."""
    if isinstance(exc, (RemoteError, QueryCancelled, DeadlineExceeded)):
        return exc  # already says what happened further down the call tree
    err = RemoteError(type(exc).__name__, str(exc))
    err.__cause__ = exc
    return err


class Runtime:
    """The in-process agent runtime (use as ``async with Runtime() as rt``).

    ``mailbox`` and ``policy`` are the defaults per agent type (``"block"``: a sender
    awaits space; ``"reject"``: raise :class:`MailboxFull`). ``max_agents`` bounds the
    registry: beyond it the least recently used idle agents are evicted (and recreated
    on their next message). ``transport`` connects this runtime to others;
    ``mesh="tcp://HOST:5555"`` is short for ``transport=engine.mesh.MeshTransport(...)``.

    ``metrics`` (an :class:`engine.observe.Metrics`) exports this runtime's counters and
    gauges, read at scrape time only (no per-message cost); ``metrics_port`` serves
    ``/metrics`` and ``/debug/profile`` on 127.0.0.1 from :meth:`start` to :meth:`stop`
    (a fresh ``Metrics`` when none is given; 0 picks a free port, see ``metrics_url``).

    ``tracer_provider`` (an OpenTelemetry ``TracerProvider``) gives every handler and tool
    call a span on it; by default the application's global provider is used when it has set
    one by the time the runtime is made. With neither, no span is opened and handlers are
    called directly. Pass ``opentelemetry.trace.NoOpTracerProvider()`` to turn tracing off.
    """

    def __init__(
        self,
        *,
        mailbox: int = DEFAULT_MAILBOX,
        policy: Policy = "block",
        max_agents: int | None = None,
        transport: Transport | None = None,
        tool_workers: int = 8,
        origin: str | None = None,
        mesh: str | None = None,
        metrics: Metrics | None = None,
        metrics_port: int | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        _check_mailbox(mailbox, policy)
        if mesh is not None:  # Runtime(mesh="tcp://HOST:5555"): the ZeroMQ mesh transport
            if transport is not None:
                raise ValueError("pass either mesh= or transport=, not both")
            from engine.mesh.transport import MeshTransport

            transport = MeshTransport(mesh)
        if max_agents is not None and (not isinstance(max_agents, int) or max_agents < 1):
            raise ValueError(f"max_agents must be a positive int or None, got {max_agents!r}")
        if origin is not None and (not isinstance(origin, str) or not origin):
            raise ValueError(f"origin must be a non-empty str, got {origin!r}")
        self.origin: str = origin or os.urandom(8).hex()
        self._mailbox = mailbox
        self._policy = policy
        self._max_agents = max_agents
        self._types: dict[str, _Type] = {}
        self._subs = Subscriptions()
        self._seq = 0
        self._other_seqs = 0  # ids drawn by _next_seq (not by send/publish)
        # Counters off the hot path; sends are derived from _seq (see message_counts).
        self._counts: dict[str, int] = dict.fromkeys(
            ("publish", "delivered", "post", "remote_send", "served", "error"), 0
        )
        self._count = 0
        self._active = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self._started = False
        self._transport = transport
        self._remote = Remote(self, transport)
        self._deadlines = Deadlines()
        self._background: set[asyncio.Task[Any]] = set()
        self._balancer: RouterPy | _RouterC | None = None  # made by the first balanced type
        self._queries: dict[int, Query] = {}  # id(query) -> query, unfinished only
        self._middleware: tuple[Middleware, ...] = ()
        self._chain: Callable[[Any, Any], Awaitable[Any]] = _terminal_async
        self._plain = True
        self._pre: tuple[Callable[..., Any], ...] = ()
        self._post: tuple[Callable[..., Any], ...] = ()
        self._err: tuple[Callable[..., Any], ...] = ()
        self.hooks = Hooks(self._rebuild)
        from engine.tools import ToolRegistry

        self.tools = ToolRegistry(self, workers=tool_workers)
        self.metrics: Metrics | None = None
        self._observe: ObserveServer | None = None
        if metrics is not None or metrics_port is not None:
            self._instrument(metrics, metrics_port)
        from engine.runtime._tracing import runtime_tracer, tracing_middleware

        self.tracer = runtime_tracer(tracer_provider)  # None: tracing off
        if self.tracer is not None:
            self.use(tracing_middleware(self.tracer))

    def _instrument(self, metrics: Metrics | None, port: int | None) -> None:
        """Attach metrics (read on scrape only) and prepare the HTTP endpoint."""
        from engine.observe.health import runtime_checks
        from engine.observe.instrument import instrument_runtime
        from engine.observe.metrics import Metrics
        from engine.observe.server import ObserveServer

        if metrics is not None and not isinstance(metrics, Metrics):
            raise TypeError(f"metrics must be an engine.observe.Metrics, got {metrics!r}")
        metrics = metrics if metrics is not None else Metrics()
        if port is not None:
            if not isinstance(port, int) or isinstance(port, bool):
                raise TypeError(f"metrics_port must be an int, got {port!r}")
            checks = runtime_checks(self)  # /readyz
            self._observe = ObserveServer(metrics, port=port, checks=checks)  # ValueError: range
        self.metrics = instrument_runtime(self, metrics, derive_replies=True)

    @property
    def metrics_url(self) -> str | None:
        """``http://127.0.0.1:PORT`` of the running metrics endpoint, else None."""
        srv = self._observe
        return srv.url if srv is not None and srv.running else None

    # -- lifecycle -----------------------------------------------------------------
    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the transport (if any); local delivery works without calling this."""
        if self._started:
            return
        if self._closed:
            raise EngineError("runtime was stopped; create a new one")
        if self._observe is not None:
            self._observe.start()
        self._started = True
        if self._transport is not None:
            await self._transport.start(self)
            for name in self._types:
                self._transport.announce(name)
            for sub in self._subs:
                self._transport.subscribe(sub.pattern)

    async def stop(self) -> None:
        """Stop: cancel running work, call ``on_stop`` of every agent, close the transport."""
        if self._closed:
            return
        self._closed = True
        for q in list(self._queries.values()):
            q.terminate()
        tasks = [a._task for t in self._types.values() for a in t.instances.values() if a._task]
        tasks += list(self._background) + list(self._remote.serving.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for fut in self._remote.pending.values():
            fut.cancel()
        agents = [a for t in self._types.values() for a in t.instances.values()]
        for t in self._types.values():
            t.instances.clear()
        self._count = 0
        await self._stop_agents(agents)
        self.tools.close()
        self._deadlines.close()
        if self._transport is not None and self._started:
            await self._transport.close()
        if self._observe is not None and self._observe.running:
            await asyncio.to_thread(self._observe.close)
        self._wake_idle()

    async def idle(self) -> None:
        """Wait until no message is queued or being handled."""
        loop = asyncio.get_running_loop()
        while self._active:
            fut: asyncio.Future[None] = loop.create_future()
            self._idle_waiters.append(fut)
            await fut

    async def stop_when_idle(self) -> None:
        """Wait until idle, then :meth:`stop`."""
        await self.idle()
        await self.stop()

    def _wake_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # -- registration --------------------------------------------------------------
    def register(
        self,
        agent_type: str,
        factory: type[Agent] | Factory,
        *,
        mailbox: int | None = None,
        policy: Policy | None = None,
        balance: str | None = None,
    ) -> None:
        """Register ``factory`` (an Agent subclass or a function returning an agent).

        ``balance`` (``"round_robin"`` or ``"least_outstanding"``) makes
        ``AgentId(agent_type, "*")`` pick one of the live instances through the native
        router instead of naming one.
        """
        if not isinstance(agent_type, str) or not agent_type or "/" in agent_type:
            raise ValueError(f"agent type must be a non-empty str without '/', got {agent_type!r}")
        if agent_type in self._types:
            raise ValueError(f"agent type {agent_type!r} is already registered")
        if not callable(factory):
            raise TypeError(f"factory for {agent_type!r} must be callable, got {factory!r}")
        cls = factory if isinstance(factory, type) else None
        if cls is not None and not issubclass(cls, Agent):
            raise TypeError(f"{cls.__name__} is not an engine.Agent subclass")
        capacity = self._mailbox if mailbox is None else mailbox
        pol = self._policy if policy is None else policy
        _check_mailbox(capacity, pol)
        entry = _Type(agent_type, factory, cls, capacity, pol)
        if balance is not None:
            if self._balancer is None:
                self._balancer = Router()
            self._balancer.set_policy(agent_type, balance)  # RoutingError for unknown names
            entry.balanced = True
        self._types[agent_type] = entry
        if cls is not None:
            for mtype in cls._routes:
                self._remote.messages.add(mtype)
        if self._transport is not None and self._started:
            self._transport.announce(agent_type)

    def subscribe(
        self, agent_type: str, *, topic: str, key: str | KeyFn | None = None
    ) -> Subscription:
        """Deliver messages published to topics matching ``topic`` to ``agent_type``.

        The instance key is the topic's ``source`` by default, ``key`` if it is a str,
        or ``key(topic_id, message)``.
        """
        if agent_type not in self._types:
            raise UndeliverableError(f"cannot subscribe unregistered agent type {agent_type!r}")
        sub = self._subs.add(agent_type, topic, key)
        sub.target = self._types[agent_type]
        if self._transport is not None and self._started:
            self._transport.subscribe(topic)
        return sub

    def unsubscribe(self, subscription: Subscription | int) -> None:
        """Remove a subscription (RoutingError if unknown)."""
        sid = subscription.id if isinstance(subscription, Subscription) else subscription
        self._subs.remove(sid)

    def use(self, middleware: Middleware) -> Callable[[], None]:
        """Append ``middleware`` to the chain around every handler and tool call."""
        if not callable(middleware):
            raise TypeError(f"middleware must be callable, got {type(middleware).__name__}")
        self._middleware = (*self._middleware, middleware)
        self._rebuild()

        def remove() -> None:
            items = list(self._middleware)
            if middleware not in items:
                raise ValueError(f"middleware {middleware!r} was already removed")
            items.remove(middleware)
            self._middleware = tuple(items)
            self._rebuild()

        return remove

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        return self._middleware

    def _rebuild(self) -> None:
        self._chain = compose(self._middleware, _terminal_async)
        hooks = self.hooks
        self._pre, self._post, self._err = hooks.pre_handler, hooks.post_handler, hooks.on_error
        self._plain = not self._middleware and not self._pre and not self._post and not self._err
        self.tools._rebuild(self._middleware)

    # -- agents --------------------------------------------------------------------
    @property
    def agent_count(self) -> int:
        return self._count

    def stats(self) -> dict[str, int]:
        """Point-in-time gauges for metrics collectors (O(agents); call at scrape time)."""
        instances = [a for t in self._types.values() for a in t.instances.values()]
        return {
            "agents": self._count,
            "agent_types": len(self._types),
            "busy_agents": sum(1 for a in instances if a._busy),
            "queued": sum(len(a._mb) for a in instances if a._mb),
            "in_flight": self._active,
            "remote_pending": len(self._remote.pending),
            "remote_serving": len(self._remote.serving),
            "subscriptions": len(self._subs),
        }

    def agents(self, agent_type: str | None = None) -> list[AgentId]:
        """Ids of live instances (of one type, or all)."""
        types = self._types.values() if agent_type is None else [self._entry(agent_type)]
        return [a.id for t in types for a in t.instances.values()]

    def get(self, agent_id: AgentId) -> Agent | None:
        """The live instance for ``agent_id`` or None (does not create it)."""
        if not isinstance(agent_id, AgentId):
            raise TypeError(f"expected an AgentId, got {type(agent_id).__name__}")
        t = self._types.get(agent_id.type)
        return None if t is None else t.instances.get(agent_id.key)

    def _entry(self, agent_type: str) -> _Type:
        t = self._types.get(agent_type)
        if t is None:
            known = ", ".join(sorted(self._types)) or "none"
            raise UndeliverableError(
                f"no agent type {agent_type!r} is registered (registered: {known})"
            )
        return t

    def _create(self, t: _Type, agent_id: AgentId) -> Agent:
        try:
            agent = t.factory()
        except Exception as exc:
            raise UndeliverableError(
                f"cannot create {agent_id}: its factory raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(agent, Agent):
            raise TypeError(
                f"factory for {t.name!r} returned {type(agent).__name__}, not an engine.Agent"
            )
        agent.id = agent_id
        agent.runtime = self
        agent._busy = False
        agent._mb = None
        agent._wait = None
        agent._task = None
        agent._current = None
        agent._tick = self._seq
        t.instances[agent_id.key] = agent
        self._count += 1
        if t.balanced:
            assert self._balancer is not None
            self._balancer.add_agent(agent_id)
        if self.hooks.on_spawn:
            self.hooks.call("on_spawn", agent)
        if self._max_agents is not None and self._count > self._max_agents:
            self._evict_lru(agent)
        return agent

    async def _start_agent(self, agent: Agent) -> None:
        """Run ``on_start`` with the agent marked busy (messages queue meanwhile)."""
        agent._busy = True
        self._active += 1
        try:
            await agent.on_start()
        except BaseException:
            t = self._types.get(agent.id.type)
            if t is not None and t.instances.get(agent.id.key) is agent:
                self._forget(agent)
            self._fail_mailbox(agent, f"{agent.id} failed to start")
            raise
        finally:
            self._active -= 1
            self._release(agent)

    async def _ensure(self, t: _Type, agent_id: AgentId) -> Agent:
        agent = self._create(t, agent_id)
        if agent._has_start:
            try:
                await self._start_agent(agent)
            except Exception as exc:
                raise self._failed(exc) from exc
        return agent

    async def spawn(self, agent_id: AgentId) -> Agent:
        """Create (and start) ``agent_id`` now; returns the existing instance if live."""
        if not isinstance(agent_id, AgentId):
            raise TypeError(f"spawn expects an AgentId, got {type(agent_id).__name__}")
        self._check_open()
        t = self._entry(agent_id.type)
        agent = t.instances.get(agent_id.key)
        return agent if agent is not None else await self._ensure(t, agent_id)

    async def spawn_many(self, specs: Iterable[AgentId | Spawn]) -> list[Agent]:
        """Spawn many agents; those named in ``needs`` are started first, others in parallel.

        Raises :class:`CycleError` for circular needs and UndeliverableError for a need
        that is neither in ``specs`` nor live. Returns the agents in ``specs`` order.
        """
        self._check_open()
        order: list[AgentId] = []
        needs: dict[AgentId, tuple[AgentId, ...]] = {}
        for spec in specs:
            if isinstance(spec, Spawn):
                aid, need = spec.id, spec.needs
                if not isinstance(aid, AgentId) or not all(isinstance(d, AgentId) for d in need):
                    raise TypeError(f"Spawn needs an AgentId id and AgentId needs, got {spec!r}")
            elif isinstance(spec, AgentId):
                aid, need = spec, ()
            else:
                raise TypeError(f"spawn_many expects AgentId or Spawn items, got {spec!r}")
            if aid not in needs:
                order.append(aid)
            needs[aid] = need
            self._entry(aid.type)
        for aid, need in needs.items():
            for dep in need:
                if dep not in needs and self.get(dep) is None:
                    raise UndeliverableError(
                        f"{aid} needs {dep}, which is neither live nor in specs"
                    )
        out: dict[AgentId, Agent] = {}
        for level in levels(needs) if any(needs.values()) else [order]:
            starting: list[Awaitable[None]] = []
            for aid in level:
                t = self._types[aid.type]
                agent = t.instances.get(aid.key)
                if agent is None:
                    agent = self._create(t, aid)
                    if agent._has_start:
                        starting.append(self._start_agent(agent))
                out[aid] = agent
            if starting:
                results = await asyncio.gather(*starting, return_exceptions=True)
                for r in results:
                    if isinstance(r, Exception):
                        raise _remote(r) from r
                    if isinstance(r, BaseException):
                        raise r
        return [out[a] for a in order]

    async def evict(self, agent_id: AgentId) -> bool:
        """Remove an idle instance (``on_stop`` runs); False if absent or busy."""
        agent = self.get(agent_id)
        if agent is None or agent._busy or agent._mb:
            return False
        self._forget(agent)
        await self._stop_agents([agent])
        return True

    def _forget(self, agent: Agent) -> None:
        t = self._types[agent.id.type]
        del t.instances[agent.id.key]
        self._count -= 1
        if t.balanced:
            assert self._balancer is not None
            self._balancer.remove_agent(agent.id)

    def _evict_lru(self, keep: Agent) -> None:
        """Evict the oldest eighth of idle agents (amortised O(log n) per creation)."""
        assert self._max_agents is not None
        idle = [
            a
            for t in self._types.values()
            for a in t.instances.values()
            if not a._busy and not a._mb and a is not keep
        ]
        excess = self._count - self._max_agents
        n = min(len(idle), max(excess, self._max_agents // 8, 1))
        if n <= 0:
            return
        idle.sort(key=lambda a: a._tick)
        victims = idle[:n]
        for agent in victims:
            self._forget(agent)
        if any(a._has_stop for a in victims) or self.hooks.on_stop:
            self._spawn_bg(self._stop_agents(victims))

    async def _stop_agents(self, agents: Sequence[Agent]) -> None:
        stopping = [a.on_stop() for a in agents if a._has_stop]
        if stopping:
            for r in await asyncio.gather(*stopping, return_exceptions=True):
                if isinstance(r, Exception):
                    log.error("on_stop raised", exc_info=r)
        if self.hooks.on_stop:
            for agent in agents:
                self.hooks.call("on_stop", agent)

    def _spawn_bg(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _check_open(self) -> None:
        if self._closed:
            raise UndeliverableError("runtime is stopped")

    # -- send ----------------------------------------------------------------------
    async def send(
        self,
        message: Any,
        *,
        to: AgentId,
        timeout: float | None = None,
        sender: AgentId | None = None,
        traceparent: str = "",
    ) -> Any:
        """Deliver ``message`` to ``to`` and return the handler's reply.

        A handler exception arrives as :class:`RemoteError`; ``timeout`` (seconds)
        raises :class:`DeadlineExceeded` and cancels the handler; cancelling the caller
        cancels the handler too. An unknown agent type raises UndeliverableError.
        ``traceparent`` (W3C trace context) is carried to the handler's ``ctx`` and onto
        the wire; ``ctx.send`` passes its own on.
        """
        t = self._types.get(to.type) if type(to) is AgentId else None
        if t is None:
            return await self._send_other(message, to, timeout, sender, traceparent)
        if self._closed:
            raise UndeliverableError("runtime is stopped")
        agent = t.instances.get(to.key)
        if agent is None:
            if t.balanced and to.key == "*":
                return await self._send_balanced(t, message, timeout, sender, traceparent)
            agent = await self._ensure(t, to)
        route = agent._routes.get(type(message))
        if route is None:
            route = self._no_route(agent, message)
        self._seq = seq = self._seq + 1
        query = current_query.get()
        ctx = Context(self, agent, route, message, sender, None, seq, query, 0.0, traceparent)
        if agent._busy and not route.concurrent:
            if sender is not None and sender == to:
                raise UndeliverableError(
                    f"{to} sent {type(message).__name__} to itself while busy, which would "
                    "wait forever; use post/publish or a concurrent handler"
                )
            return await self._enqueue(t, agent, route, message, ctx, timeout)
        if timeout is not None:
            return await self._inline_timeout(agent, route, message, ctx, timeout)
        # Fast path: the target is idle, run its handler in this task.
        self._active += 1
        concurrent = route.concurrent
        if not concurrent:
            agent._busy = True
        try:
            if query is None:
                if self._plain:
                    try:
                        if route.is_async:
                            return await route.fn(agent, message, ctx)
                        return route.fn(agent, message, ctx)
                    except Exception as exc:
                        raise self._failed(exc) from exc
                if not self._middleware:  # hooks only: same as _call, one coroutine less
                    post = self._post
                    try:
                        for hook in self._pre:
                            hook(ctx, message)
                        t0 = _clock() if post else 0.0
                        if route.is_async:
                            result = await route.fn(agent, message, ctx)
                        else:
                            result = route.fn(agent, message, ctx)
                        if post:
                            seconds = _clock() - t0
                            for hook in post:
                                hook(ctx, message, result, seconds)
                    except Exception as exc:
                        if self._err:
                            self.hooks.call("on_error", ctx, message, exc)
                        raise self._failed(exc) from exc
                    return result
            return await self._call(ctx, message)
        finally:
            self._active -= 1
            agent._tick = seq
            if not concurrent:
                if agent._mb:
                    self._start_drain(agent)
                else:
                    agent._busy = False
            if not self._active and self._idle_waiters:
                self._wake_idle()

    async def _send_balanced(
        self,
        t: _Type,
        message: Any,
        timeout: float | None,
        sender: AgentId | None,
        traceparent: str,
    ) -> Any:
        """``AgentId(type, "*")``: the balancer picks a live instance; acked when done."""
        balancer = self._balancer
        assert balancer is not None
        try:
            slot = balancer.pick(t.name)
        except RoutingError:
            raise UndeliverableError(
                f"no live instance of {t.name!r} to pick for {type(message).__name__} "
                "(spawn some first)"
            ) from None
        try:
            return await self.send(
                message,
                to=balancer.agent(slot),
                timeout=timeout,
                sender=sender,
                traceparent=traceparent,
            )
        finally:
            with contextlib.suppress(RoutingError):  # evicted meanwhile
                balancer.ack(slot)

    def _no_route(self, agent: Agent, message: Any) -> Route:
        route = agent.route_for(type(message))
        if route is None:
            raise UndeliverableError(
                f"{type(agent).__name__} ({agent.id}) has no handler for {type(message).__name__}"
            )
        return route

    async def _call(self, ctx: Context, message: Any) -> Any:
        """One handler invocation with query checks, hooks and middleware."""
        query = ctx.query
        if query is not None:
            if query.blocked:
                await query.checkpoint()
            query.steps += 1
        post = self._post
        try:
            for hook in self._pre:
                hook(ctx, message)
            t0 = _clock() if post else 0.0
            route = ctx.route
            if self._middleware:
                result = await self._chain(ctx, message)
            elif route.is_async:
                result = await route.fn(ctx.agent, message, ctx)
            else:
                result = route.fn(ctx.agent, message, ctx)
            if post:
                seconds = _clock() - t0
                for hook in post:
                    hook(ctx, message, result, seconds)
        except Exception as exc:
            if self._err:
                self.hooks.call("on_error", ctx, message, exc)
            raise self._failed(exc) from exc
        return result

    async def _inline_timeout(
        self, agent: Agent, route: Route, message: Any, ctx: Context, timeout: float
    ) -> Any:
        _check_timeout(timeout)
        loop = asyncio.get_running_loop()
        ctx.deadline = loop.time() + timeout
        self._active += 1
        if not route.concurrent:
            agent._busy = True
        task = asyncio.current_task()
        assert task is not None
        deadline = self._deadlines.add(ctx.deadline, task)
        try:
            if self._plain and ctx.query is None:
                try:
                    if route.is_async:
                        result = await route.fn(agent, message, ctx)
                    else:
                        result = route.fn(agent, message, ctx)
                except Exception as exc:
                    raise self._failed(exc) from exc
            else:
                result = await self._call(ctx, message)
        except asyncio.CancelledError:
            if deadline[3]:  # expired
                task.uncancel()
                raise DeadlineExceeded(
                    f"{agent.id} did not reply to {type(message).__name__} within {timeout}s"
                ) from None
            raise
        else:
            if deadline[3]:  # expired, but the handler swallowed its cancellation
                task.uncancel()
            return result
        finally:
            self._deadlines.done(deadline)
            self._active -= 1
            agent._tick = ctx.seq
            if not route.concurrent:
                self._release(agent)
            if not self._active:
                self._wake_idle()

    async def _enqueue(
        self,
        t: _Type,
        agent: Agent,
        route: Route,
        message: Any,
        ctx: Context,
        timeout: float | None,
    ) -> Any:
        if timeout is None:
            return await self._queue_and_wait(t, agent, route, message, ctx)
        _check_timeout(timeout)
        ctx.deadline = asyncio.get_running_loop().time() + timeout
        task = asyncio.current_task()
        assert task is not None
        deadline = self._deadlines.add(ctx.deadline, task)
        try:
            result = await self._queue_and_wait(t, agent, route, message, ctx)
        except asyncio.CancelledError:
            if deadline[3]:  # expired
                task.uncancel()
                raise DeadlineExceeded(
                    f"{agent.id} did not reply to {type(message).__name__} within {timeout}s"
                ) from None
            raise
        else:
            if deadline[3]:  # expired
                task.uncancel()
            return result
        finally:
            self._deadlines.done(deadline)

    async def _queue_and_wait(
        self, t: _Type, agent: Agent, route: Route, message: Any, ctx: Context
    ) -> Any:
        mb = agent._mb
        if mb is not None and len(mb) >= t.capacity:
            await self._reserve(t, agent)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ctx._reply = fut
        self._push(agent, ctx)
        try:
            return await fut
        except asyncio.CancelledError:
            # The sender gave up (cancel or timeout): a queued request is skipped by the
            # drain (its future is done); a running one gets its handler cancelled.
            if agent._current is fut and agent._task is not None:
                agent._task.cancel()
            raise

    async def _reserve(self, t: _Type, agent: Agent) -> None:
        """Make room for one message in ``agent``'s mailbox (wait or raise per policy)."""
        mb = agent._mb
        if mb is None:
            mb = agent._mb = deque()
        if len(mb) < t.capacity:
            return
        if t.policy == "reject":
            raise MailboxFull(f"mailbox of {agent.id} is full ({t.capacity} messages)")
        loop = asyncio.get_running_loop()
        while len(mb) >= t.capacity:
            if agent._wait is None:
                agent._wait = deque()
            space: asyncio.Future[None] = loop.create_future()
            agent._wait.append(space)
            try:
                await space
            except asyncio.CancelledError:
                if space.done() and not space.cancelled():
                    _wake_one(agent)  # pass our wake-up on
                raise

    def _push(self, agent: Agent, ctx: Context) -> None:
        if self.tracer is not None and not ctx.traceparent:  # runs later, in another task
            ctx.traceparent = current_traceparent()
        mb = agent._mb
        if mb is None:
            mb = agent._mb = deque()
        mb.append(ctx)
        self._active += 1
        if not agent._busy:
            agent._busy = True
            self._start_drain(agent)

    def _release(self, agent: Agent) -> None:
        if agent._mb:
            self._start_drain(agent)
        else:
            agent._busy = False

    def _start_drain(self, agent: Agent) -> None:
        agent._task = asyncio.get_running_loop().create_task(self._drain(agent))

    async def _drain(self, agent: Agent) -> None:
        """Handle ``agent``'s queued messages in order; the agent stays busy meanwhile."""
        mb = agent._mb
        assert mb is not None
        task = agent._task
        current = current_query.get()
        seq = 0
        try:
            while mb:
                ctx = mb.popleft()
                route = ctx.route
                message = ctx.message
                fut = ctx._reply
                if agent._wait:
                    _wake_one(agent)
                seq = ctx.seq
                query = ctx.query
                if query is not current:
                    current_query.set(query)
                    current = query
                if fut is None:  # published: nobody waits for a result
                    try:
                        if self._plain and query is None:
                            if route.is_async:
                                await route.fn(agent, message, ctx)
                            else:
                                route.fn(agent, message, ctx)
                        else:
                            await self._call(ctx, message)
                    except Exception as exc:
                        if not isinstance(exc, QueryCancelled):
                            self._publish_failed(ctx, message, exc)
                    finally:
                        self._active -= 1
                    continue
                if fut.done():  # the sender gave up (timeout/cancel)
                    self._active -= 1
                    continue
                agent._current = fut
                try:
                    if self._plain and query is None:
                        if route.is_async:
                            result = await route.fn(agent, message, ctx)
                        else:
                            result = route.fn(agent, message, ctx)
                    else:
                        result = await self._call(ctx, message)
                except asyncio.CancelledError:
                    if not fut.cancelled() or self._closed:
                        raise
                    if task is not None:
                        task.uncancel()  # only this request was cancelled; keep draining
                except Exception as exc:
                    if not fut.done():
                        fut.set_exception(self._failed(exc))
                else:
                    if not fut.done():
                        fut.set_result(result)
                    elif fut.cancelled() and task is not None and task.cancelling():
                        task.uncancel()  # the handler swallowed its cancellation
                finally:
                    agent._current = None
                    ctx._reply = None  # no ctx -> future -> error -> frame -> ctx cycle
                    self._active -= 1
        finally:
            agent._task = None
            agent._busy = False
            if seq:
                agent._tick = seq
            if mb:  # cancelled while messages remain: fail them
                self._fail_mailbox(agent, f"{agent.id} stopped")
            if not self._active:
                self._wake_idle()

    def _fail_mailbox(self, agent: Agent, reason: str) -> None:
        mb = agent._mb
        while mb:
            fut = mb.popleft()._reply
            self._active -= 1
            if fut is not None and not fut.done():
                fut.set_exception(UndeliverableError(reason))

    def _failed(self, exc: BaseException) -> BaseException:
        """Count a handler failure; what its sender sees (see ``_remote``)."""
        self._counts["error"] += 1
        return _remote(exc)

    def message_counts(self) -> dict[str, int]:
        """Totals since start by kind, for metrics (``engine_messages_total{kind}``).

        ``send`` local requests, ``publish`` publish calls, ``delivered`` their local
        deliveries, ``post`` one-way sends, ``remote_send`` requests through the
        transport, ``served`` inbound requests handled here, ``error`` handler failures.
        """
        counts = dict(self._counts)
        sends = self._seq - self._other_seqs - counts["publish"]
        return {"send": sends, **counts}

    def _publish_failed(self, ctx: Context, message: Any, exc: Exception) -> None:
        log.error(
            "handler %s of %s failed on published %s",
            ctx.route.name,
            ctx.agent.id,
            type(message).__name__,
            exc_info=exc,
        )

    async def send_many(
        self,
        requests: Iterable[tuple[Any, AgentId]],
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Send many ``(message, to)`` pairs concurrently; replies in request order."""
        coros = [self.send(m, to=to, timeout=timeout) for m, to in requests]
        return await asyncio.gather(*coros, return_exceptions=return_exceptions)

    # -- publish -------------------------------------------------------------------
    async def publish(
        self,
        message: Any,
        *,
        topic: str | TopicId,
        sender: AgentId | None = None,
        local_only: bool = False,
        traceparent: str = "",
    ) -> int:
        """Fan ``message`` out to the subscribers of ``topic``; returns local deliveries.

        Handlers run later, in each agent's own order; their exceptions are logged and
        passed to ``on_error`` hooks (nobody awaits a reply). With a transport the message
        also goes out to other runtimes unless ``local_only`` (set for inbound messages).
        """
        if type(topic) is str:
            subs = self._subs.match(topic)
            topic_id = TopicId(topic)
        elif isinstance(topic, TopicId):
            subs = self._subs.match(topic.type)
            topic_id = topic
        else:
            raise TypeError(f"topic must be a str or TopicId, got {type(topic).__name__}")
        if self._closed:
            raise UndeliverableError("runtime is stopped")
        if self.tracer is not None and not traceparent:  # handlers run later, in other tasks
            traceparent = current_traceparent()
        self._seq = seq = self._seq + 1
        delivered = 0
        if subs:
            query = current_query.get()
            mtype = type(message)
            full: list[str] = []
            for sub in subs:
                t = sub.target
                key = sub.fixed
                if key is None:
                    if sub.by_source:
                        key = topic_id.source
                    else:
                        key = sub.key(topic_id, message)
                        if type(key) is not str:
                            raise TypeError(
                                f"key function of subscription {sub.id} ({sub.pattern!r}) "
                                f"returned {type(key).__name__}, expected str"
                            )
                agent = t.instances.get(key)
                if agent is None:
                    agent = await self._ensure(t, AgentId(t.name, key))
                route = agent._routes.get(mtype) or agent.route_for(mtype)
                if route is None:
                    continue  # this subscriber does not handle the message class
                ctx = Context(
                    self, agent, route, message, sender, topic_id, seq, query, 0.0, traceparent
                )
                if route.concurrent:
                    self._active += 1
                    self._spawn_bg(self._run_concurrent(ctx, message))
                    delivered += 1
                    continue
                mb = agent._mb
                if mb is not None and len(mb) >= t.capacity:
                    if t.policy == "reject":
                        full.append(str(agent.id))
                        continue
                    await self._reserve(t, agent)
                    mb = agent._mb
                if mb is None:
                    mb = agent._mb = deque()
                mb.append(ctx)
                self._active += 1
                delivered += 1
                if not agent._busy:
                    agent._busy = True
                    self._start_drain(agent)
            if full:
                raise MailboxFull(
                    f"published {type(message).__name__} dropped for full mailboxes: "
                    + ", ".join(full)
                )
        counts = self._counts
        counts["publish"] += 1
        counts["delivered"] += delivered
        if self._transport is not None and self._started and not local_only:
            tp = traceparent or current_traceparent()
            self._remote.publish(message, topic_id, seq, sender, tp)
        return delivered

    async def post(
        self,
        message: Any,
        *,
        to: AgentId,
        sender: AgentId | None = None,
        traceparent: str = "",
    ) -> None:
        """One-way delivery to one agent: queued like a published message, no reply.

        Returns once the message is in the agent's mailbox (waiting for space under the
        ``block`` policy; ``MailboxFull`` under ``reject``). Handler errors are logged.
        """
        t = self._types.get(to.type) if type(to) is AgentId else None
        if t is None:
            if not isinstance(to, AgentId):
                raise TypeError(f"to= must be an AgentId, got {type(to).__name__}")
            known = ", ".join(sorted(self._types)) or "none"
            raise UndeliverableError(
                f"no agent type {to.type!r} is registered (registered: {known})"
            )
        self._check_open()
        agent = t.instances.get(to.key)
        if agent is None:
            agent = await self._ensure(t, to)
        route = agent._routes.get(type(message)) or self._no_route(agent, message)
        seq = self._next_seq()
        self._counts["post"] += 1
        query = current_query.get()
        ctx = Context(self, agent, route, message, sender, None, seq, query, 0.0, traceparent)
        if route.concurrent:
            self._active += 1
            self._spawn_bg(self._run_concurrent(ctx, message))
            return
        await self._reserve(t, agent)
        self._push(agent, ctx)

    async def _run_concurrent(self, ctx: Context, message: Any) -> None:
        try:
            await self._call(ctx, message)
        except Exception as exc:
            self._publish_failed(ctx, message, exc)
        finally:
            self._active -= 1
            if not self._active:
                self._wake_idle()

    async def publish_many(
        self, items: Iterable[tuple[Any, str | TopicId]], *, sender: AgentId | None = None
    ) -> int:
        """Publish many ``(message, topic)`` pairs in order; returns local deliveries."""
        total = 0
        for message, topic in items:
            total += await self.publish(message, topic=topic, sender=sender)
        return total

    # -- queries -------------------------------------------------------------------
    def start_query(
        self,
        request: Any,
        *,
        to: AgentId | None = None,
        timeout: float | None = None,
        name: str | None = None,
        start: bool = True,
    ) -> Query:
        """Start a query: ``request`` sent to ``to``, or ``request(query)`` if no ``to``.

        Returns the :class:`Query` handle (RUNNING, or INIT with ``start=False``).
        """
        self._check_open()
        if to is None:
            if not callable(request):
                raise TypeError("start_query needs to= for a message, or an async function")
            fn = request

            async def body(q: Query) -> Any:
                return await fn(q)

        else:
            if not isinstance(to, AgentId):
                raise TypeError(f"to= must be an AgentId, got {type(to).__name__}")
            msg = request

            async def body(q: Query) -> Any:
                return await self.send(msg, to=to, timeout=timeout)

        q = Query(body, name or f"q{self._next_seq()}")
        self._queries[id(q)] = q
        q.add_listener(self._query_changed)
        return q.start() if start else q

    @property
    def queries(self) -> list[Query]:
        """Queries started here that have not finished yet."""
        return list(self._queries.values())

    def _query_changed(self, q: Query, state: QueryState) -> None:
        if state.terminal:
            self._queries.pop(id(q), None)

    # -- transport and mesh hosting ------------------------------------------------
    async def _send_other(
        self,
        message: Any,
        to: AgentId,
        timeout: float | None,
        sender: AgentId | None,
        traceparent: str,
    ) -> Any:
        if not isinstance(to, AgentId):
            raise TypeError(f"to= must be an AgentId, got {type(to).__name__}")
        self._check_open()
        if self._transport is None or not self._started:
            known = ", ".join(sorted(self._types)) or "none"
            raise UndeliverableError(
                f"no agent type {to.type!r} is registered (registered: {known})"
            )
        if timeout is not None:
            _check_timeout(timeout)
        if not traceparent:  # continue the innermost Tracer.span open here, if any
            traceparent = current_traceparent()
        return await self._remote.send(message, to, timeout, sender, traceparent)

    def deliver(self, envelope: Envelope) -> None:
        """Transport entry point: accept one inbound envelope (never blocks)."""
        self._remote.deliver(envelope)

    async def handle(self, envelope: Envelope) -> Envelope | None:
        """Mesh ``Host`` entry point: run one delivered SEND/PUBLISH envelope here.

        Returns the REPLY (or ERROR) envelope for a SEND, None for a PUBLISH.
        """
        return await self._remote.handle(envelope)

    @property
    def types(self) -> list[str]:
        """Registered agent type names (what this runtime can host)."""
        return list(self._types)

    @property
    def subscriptions(self) -> list[str]:
        """Distinct topic patterns this runtime subscribes to."""
        return list(dict.fromkeys(sub.pattern for sub in self._subs))

    def _next_seq(self) -> int:
        self._seq += 1
        self._other_seqs += 1
        return self._seq


def _wake_one(agent: Agent) -> None:
    waiters = agent._wait
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_result(None)
            return


def _check_mailbox(capacity: object, policy: object) -> None:
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise ValueError(f"mailbox capacity must be a positive int, got {capacity!r}")
    if policy not in _POLICIES:
        raise ValueError(f"mailbox policy must be one of {_POLICIES}, got {policy!r}")


def _check_timeout(timeout: object) -> None:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
