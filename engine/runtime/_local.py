"""The in-process runtime: agents, send/publish/post, hooks, queries, transport.

Delivery model. ``send`` to an idle agent runs the handler right in the caller's task —
no queue, no future, no task switch — which is why a sequential round trip costs about a
microsecond. A message for a busy agent goes into its bounded mailbox
(:mod:`engine.runtime._mailbox`) with a future; whoever frees the agent starts one drain
task that works through the mailbox in order. ``publish`` and ``post`` always queue (fire
and forget). Handlers marked ``concurrent`` skip the mailbox.

The parts: :class:`~engine.runtime._books.Books` (ids, work in flight, idle waiters,
counters; shared with the transport side, :class:`~engine.runtime._remote.Remote`),
:class:`~engine.runtime._calls.Calls` (the one handler-call path),
:class:`~engine.runtime._mailbox.Mailboxes` and :class:`~engine.runtime._agents.Agents`
(types and instances). This module routes between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from engine._transports import transport_for
from engine.agents import Agent, Context, Route
from engine.errors import (
    DeadlineExceeded,
    EngineError,
    MailboxFull,
    RoutingError,
    UndeliverableError,
)
from engine.messages import AgentId, Envelope, TopicId
from engine.observe.tracing import current_traceparent
from engine.runtime._agents import Agents, AgentType, Factory
from engine.runtime._books import Books
from engine.runtime._calls import Calls
from engine.runtime._deadlines import Deadlines
from engine.runtime._fanout import Fanout
from engine.runtime._hooks import Hooks, Middleware
from engine.runtime._mailbox import DEFAULT_MAILBOX, Mailboxes, Policy, check_mailbox
from engine.runtime._queries import Query, QueryState, current_query
from engine.runtime._remote import Remote
from engine.runtime._spawn import Spawn
from engine.runtime._subscriptions import KeyFn, Subscription, Subscriptions
from engine.runtime._transport import Transport

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from engine.observe.metrics import Metrics
    from engine.observe.server import ObserveServer
    from engine.tools import ToolRegistry

__all__ = ["DEFAULT_MAILBOX", "Policy", "Runtime", "Spawn"]


class Runtime:
    """The in-process agent runtime (use as ``async with Runtime() as rt``).

    ``mailbox`` and ``policy`` are the defaults per agent type (``"block"``: a sender
    awaits space; ``"reject"``: raise :class:`MailboxFull`). ``max_agents`` bounds the
    registry: beyond it the least recently used idle agents are evicted (and recreated
    on their next message). ``transport`` connects this runtime to others;
    ``mesh="tcp://HOST:5555"`` is short for ``transport=engine.mesh.MeshTransport(...)``
    (resolved through the transport registry, which ``engine.mesh`` fills).

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
        check_mailbox(mailbox, policy)
        if mesh is not None:  # Runtime(mesh="tcp://HOST:5555"): the ZeroMQ mesh transport
            if transport is not None:
                raise ValueError("pass either mesh= or transport=, not both")
            transport = transport_for("mesh", mesh)
        if max_agents is not None and (not isinstance(max_agents, int) or max_agents < 1):
            raise ValueError(f"max_agents must be a positive int or None, got {max_agents!r}")
        if origin is not None and (not isinstance(origin, str) or not origin):
            raise ValueError(f"origin must be a non-empty str, got {origin!r}")
        self.origin: str = origin or os.urandom(8).hex()
        self._mailbox = mailbox
        self._policy = policy
        self._subs = Subscriptions()
        self._started = False
        self._transport = transport
        self.hooks = Hooks(self._rebuild)
        self._books = books = Books()
        self._calls = calls = Calls(books, self.hooks)
        self._mailboxes = Mailboxes(books, calls)
        self._agents = Agents(self, books, calls, self._mailboxes, self.hooks, max_agents)
        self._types = self._agents.types  # the same dict: one lookup on the hot path
        self._fanout = Fanout(self, books, calls, self._mailboxes, self._agents)
        self._remote = Remote(self, books, transport)
        self._deadlines = Deadlines()
        self._queries: dict[int, Query] = {}  # id(query) -> query, unfinished only
        from engine.tools import ToolRegistry

        self.tools: ToolRegistry = ToolRegistry(self, workers=tool_workers)
        self.metrics: Metrics | None = None
        self._observe: ObserveServer | None = None
        if metrics is not None or metrics_port is not None:
            self._instrument(metrics, metrics_port)
        from engine.runtime._tracing import runtime_tracer, tracing_middleware

        self.tracer = runtime_tracer(tracer_provider)  # None: tracing off
        self._mailboxes.tracing = self.tracer is not None
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
        if self._books.closed:
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
        books = self._books
        if books.closed:
            return
        books.closed = True
        for q in list(self._queries.values()):
            q.terminate()
        agents = self._agents
        tasks = [a._task for a in agents.live() if a._task]
        tasks += list(agents.background) + list(self._remote.serving.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for fut in self._remote.pending.values():
            fut.cancel()
        await agents.stop(agents.clear())
        self.tools.close()
        self._deadlines.close()
        if self._transport is not None and self._started:
            await self._transport.close()
        if self._observe is not None and self._observe.running:
            await asyncio.to_thread(self._observe.close)
        books.wake()

    async def idle(self) -> None:
        """Wait until no message is queued or being handled."""
        await self._books.idle()

    async def stop_when_idle(self) -> None:
        """Wait until idle, then :meth:`stop`."""
        await self.idle()
        await self.stop()

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
        check_mailbox(capacity, pol)
        self._agents.add_type(AgentType(agent_type, factory, cls, capacity, pol), balance)
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
        calls = self._calls
        calls.middleware = (*calls.middleware, middleware)
        self._rebuild()

        def remove() -> None:
            items = list(calls.middleware)
            if middleware not in items:
                raise ValueError(f"middleware {middleware!r} was already removed")
            items.remove(middleware)
            calls.middleware = tuple(items)
            self._rebuild()

        return remove

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        return self._calls.middleware

    @property
    def _plain(self) -> bool:
        """No hooks and no middleware: handlers are called directly (for tests)."""
        return self._calls.plain

    def _rebuild(self) -> None:
        middleware = self._calls.middleware
        self._calls.rebuild(middleware)
        self.tools._rebuild(middleware)

    # -- agents --------------------------------------------------------------------
    @property
    def agent_count(self) -> int:
        return self._agents.count

    def stats(self) -> dict[str, int]:
        """Point-in-time gauges for metrics collectors (O(agents); call at scrape time)."""
        instances = self._agents.live()
        return {
            "agents": self._agents.count,
            "agent_types": len(self._types),
            "busy_agents": sum(1 for a in instances if a._busy),
            "queued": sum(len(a._mb) for a in instances if a._mb),
            "in_flight": self._books.active,
            "remote_pending": len(self._remote.pending),
            "remote_serving": len(self._remote.serving),
            "subscriptions": len(self._subs),
        }

    def full_mailboxes(self) -> list[AgentId]:
        """Live agents whose mailbox is full (for readiness checks)."""
        return [
            agent.id
            for t in list(self._types.values())
            for agent in list(t.instances.values())
            if agent._mb is not None and len(agent._mb) >= t.capacity
        ]

    def agents(self, agent_type: str | None = None) -> list[AgentId]:
        """Ids of live instances (of one type, or all)."""
        if agent_type is None:
            return [a.id for a in self._agents.live()]
        return [a.id for a in self._agents.entry(agent_type).instances.values()]

    def get(self, agent_id: AgentId) -> Agent | None:
        """The live instance for ``agent_id`` or None (does not create it)."""
        if not isinstance(agent_id, AgentId):
            raise TypeError(f"expected an AgentId, got {type(agent_id).__name__}")
        return self._agents.get(agent_id)

    async def spawn(self, agent_id: AgentId) -> Agent:
        """Create (and start) ``agent_id`` now; returns the existing instance if live."""
        if not isinstance(agent_id, AgentId):
            raise TypeError(f"spawn expects an AgentId, got {type(agent_id).__name__}")
        self._check_open()
        t = self._agents.entry(agent_id.type)
        agent = t.instances.get(agent_id.key)
        return agent if agent is not None else await self._agents.ensure(t, agent_id)

    async def spawn_many(self, specs: Iterable[AgentId | Spawn]) -> list[Agent]:
        """Spawn many agents; those named in ``needs`` are started first, others in parallel.

        Raises :class:`CycleError` for circular needs and UndeliverableError for a need
        that is neither in ``specs`` nor live. Returns the agents in ``specs`` order.
        """
        self._check_open()
        return await self._agents.spawn_many(specs)

    async def evict(self, agent_id: AgentId) -> bool:
        """Remove an idle instance (``on_stop`` runs); False if absent or busy."""
        agent = self.get(agent_id)
        if agent is None or agent._busy or agent._mb:
            return False
        self._agents.forget(agent)
        await self._agents.stop([agent])
        return True

    def _check_open(self) -> None:
        if self._books.closed:
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
        books = self._books
        if books.closed:
            raise UndeliverableError("runtime is stopped")
        agent = t.instances.get(to.key)
        if agent is None:
            if t.balanced and to.key == "*":
                return await self._send_balanced(t, message, timeout, sender, traceparent)
            agent = await self._agents.ensure(t, to)
        route = agent._routes.get(type(message))
        if route is None:
            route = self._no_route(agent, message)
        books.seq = seq = books.seq + 1
        query = current_query.get()
        ctx = Context(self, agent, route, message, sender, None, seq, query, 0.0, traceparent)
        if agent._busy and not route.concurrent:
            if sender is not None and sender == to:
                raise UndeliverableError(
                    f"{to} sent {type(message).__name__} to itself while busy, which would "
                    "wait forever; use post/publish or a concurrent handler"
                )
            if timeout is None:
                return await self._mailboxes.request(agent, ctx, t.capacity, t.policy)
            return await self._with_deadline(agent, ctx, timeout, t)
        if timeout is not None:
            return await self._with_deadline(agent, ctx, timeout, None)
        # The target is idle: run its handler in this task (no queue, no task switch).
        books.active += 1
        concurrent = route.concurrent
        if not concurrent:
            agent._busy = True
        calls = self._calls
        try:
            if query is None and calls.plain and route.is_async:
                # INLINE: Calls.start's plain case, copied onto the idle fast path: one
                # call less per round trip, 5% of its instructions (docs/performance.md).
                return await route.fn(agent, message, ctx)
            return await calls.start(ctx, message)
        except Exception as exc:
            raise calls.failed(exc) from exc
        finally:
            books.active -= 1
            agent._tick = seq
            if not concurrent:
                if agent._mb:
                    self._mailboxes.start_drain(agent)
                else:
                    agent._busy = False
            if not books.active and books.waiters:
                books.wake()

    async def _send_balanced(
        self,
        t: AgentType,
        message: Any,
        timeout: float | None,
        sender: AgentId | None,
        traceparent: str,
    ) -> Any:
        """``AgentId(type, "*")``: the balancer picks a live instance; acked when done."""
        balancer = self._agents.balancer
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

    async def _with_deadline(
        self, agent: Agent, ctx: Context, timeout: float, queue: AgentType | None
    ) -> Any:
        """A request with a deadline: run on the idle agent now (``queue`` None), or
        queue it for the busy one; its task is cancelled when the deadline passes."""
        _check_timeout(timeout)
        ctx.deadline = asyncio.get_running_loop().time() + timeout
        task = asyncio.current_task()
        assert task is not None
        deadline = self._deadlines.add(ctx.deadline, task)
        try:
            if queue is not None:
                result = await self._mailboxes.request(agent, ctx, queue.capacity, queue.policy)
            else:
                result = await self._call_now(agent, ctx)
        except asyncio.CancelledError:
            if deadline[3]:  # expired
                task.uncancel()
                raise DeadlineExceeded(
                    f"{agent.id} did not reply to {type(ctx.message).__name__} within {timeout}s"
                ) from None
            raise
        else:
            if deadline[3]:  # expired, but the handler swallowed its cancellation
                task.uncancel()
            return result
        finally:
            self._deadlines.done(deadline)

    async def _call_now(self, agent: Agent, ctx: Context) -> Any:
        """Run ``ctx`` on idle ``agent`` in this task, marked busy meanwhile."""
        books = self._books
        books.active += 1
        concurrent = ctx.route.concurrent
        if not concurrent:
            agent._busy = True
        try:
            return await self._calls.start(ctx, ctx.message)
        except Exception as exc:
            raise self._calls.failed(exc) from exc
        finally:
            books.active -= 1
            agent._tick = ctx.seq
            if not concurrent:
                self._mailboxes.release(agent)
            if not books.active:
                books.wake()

    def message_counts(self) -> dict[str, int]:
        """Totals since start by kind, for metrics (``engine_messages_total{kind}``).

        ``send`` local requests, ``publish`` publish calls, ``delivered`` their local
        deliveries, ``post`` one-way sends, ``remote_send`` requests through the
        transport, ``served`` inbound requests handled here, ``error`` handler failures.
        """
        return self._books.message_counts()

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
        books = self._books
        if books.closed:
            raise UndeliverableError("runtime is stopped")
        if self.tracer is not None and not traceparent:  # handlers run later, in other tasks
            traceparent = current_traceparent()
        books.seq = seq = books.seq + 1
        delivered = 0
        if subs:
            mailboxes = self._mailboxes
            query = current_query.get()
            mtype = type(message)
            full: list[str] = []
            for sub in subs:
                t = sub.target
                key = sub.fixed
                if key is None:
                    key = topic_id.source if sub.by_source else sub.key_for(topic_id, message)
                agent = t.instances.get(key)
                if agent is None:
                    agent = await self._agents.ensure(t, AgentId(t.name, key))
                route = agent._routes.get(mtype) or agent.route_for(mtype)
                if route is None:
                    continue  # this subscriber does not handle the message class
                ctx = Context(
                    self, agent, route, message, sender, topic_id, seq, query, 0.0, traceparent
                )
                if route.concurrent:
                    self._fanout.run_concurrent(ctx)
                    delivered += 1
                    continue
                mb = agent._mb
                if mb is not None and len(mb) >= t.capacity:
                    if t.policy == "reject":
                        full.append(str(agent.id))
                        continue
                    await mailboxes.reserve(agent, t.capacity, t.policy)
                    mb = agent._mb
                if mb is None:
                    mb = agent._mb = deque()
                # Mailboxes.push, inline (the trace context is settled above): one call
                # less per subscriber.
                mb.append(ctx)
                books.active += 1
                delivered += 1
                if not agent._busy:
                    agent._busy = True
                    mailboxes.start_drain(agent)
            if full:
                raise MailboxFull(
                    f"published {type(message).__name__} dropped for full mailboxes: "
                    + ", ".join(full)
                )
        counts = books.counts
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
            raise UndeliverableError(
                f"no agent type {to.type!r} is registered (registered: {self._agents.known()})"
            )
        self._check_open()
        agent = t.instances.get(to.key)
        if agent is None:
            agent = await self._agents.ensure(t, to)
        route = agent._routes.get(type(message)) or self._no_route(agent, message)
        await self._fanout.post(t, agent, route, message, sender, traceparent)

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

        q = Query(body, name or f"q{self._books.next_id()}")
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

    # -- transport -----------------------------------------------------------------
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
            raise UndeliverableError(
                f"no agent type {to.type!r} is registered (registered: {self._agents.known()})"
            )
        if timeout is not None:
            _check_timeout(timeout)
        if not traceparent:  # continue the innermost Tracer.span open here, if any
            traceparent = current_traceparent()
        return await self._remote.send(
            message, to=to, timeout=timeout, sender=sender, traceparent=traceparent
        )

    def deliver(self, envelope: Envelope) -> None:
        """Transport entry point: accept one inbound envelope (never blocks)."""
        self._remote.deliver(envelope)

    async def handle(self, envelope: Envelope) -> Envelope | None:
        """Mesh ``Host`` entry point: run one delivered SEND/PUBLISH envelope here.

        Returns the REPLY (or ERROR) envelope for a SEND, None for a PUBLISH.
        """
        return await self._remote.handle(envelope)

    @property
    def transport(self) -> Transport | None:
        """The transport connecting this runtime to others, if any."""
        return self._transport

    @property
    def types(self) -> list[str]:
        """Registered agent type names (what this runtime can host)."""
        return list(self._types)

    @property
    def subscriptions(self) -> list[str]:
        """Distinct topic patterns this runtime subscribes to."""
        return list(dict.fromkeys(sub.pattern for sub in self._subs))


def _check_timeout(timeout: object) -> None:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
