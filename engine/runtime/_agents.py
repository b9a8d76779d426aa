"""The runtime's agent table: registered types, live instances, creation and eviction.

Instances are created on their first message (or by ``spawn``), started with ``on_start``
while marked busy (messages queue meanwhile), balanced through the native router when
their type asks for it, and evicted least recently used beyond ``max_agents``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from engine.agents import Agent
from engine.errors import UndeliverableError
from engine.messages import AgentId
from engine.routing import Router, RouterPy
from engine.runtime._books import Books
from engine.runtime._calls import Calls, remote_error
from engine.runtime._hooks import Hooks
from engine.runtime._mailbox import Mailboxes, check_mailbox
from engine.runtime._spawn import Spawn, levels

if TYPE_CHECKING:
    from engine._native._router import Router as _RouterC

__all__ = ["AgentType", "Agents", "Factory"]

log = logging.getLogger("engine.runtime")

Factory = Callable[[], Agent]


class AgentType:
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
        self.balanced = False  # instances tracked in the balancer (key "*")


class Agents:
    """Registered types and their live instances, for one runtime ``owner``.

    ``owner`` is what an agent sees as ``agent.runtime``.
    """

    __slots__ = (
        "background",
        "balancer",
        "books",
        "calls",
        "count",
        "hooks",
        "mailboxes",
        "max_agents",
        "owner",
        "types",
    )

    def __init__(
        self,
        owner: Any,
        books: Books,
        calls: Calls,
        mailboxes: Mailboxes,
        hooks: Hooks,
        max_agents: int | None,
    ) -> None:
        self.owner = owner
        self.books = books
        self.calls = calls
        self.mailboxes = mailboxes
        self.hooks = hooks
        self.max_agents = max_agents
        self.types: dict[str, AgentType] = {}
        self.count = 0
        self.balancer: RouterPy | _RouterC | None = None  # made by the first balanced type
        self.background: set[asyncio.Task[Any]] = set()

    def register(
        self,
        agent_type: str,
        factory: type[Agent] | Factory,
        capacity: int,
        policy: str,
        balance: str | None,
    ) -> type[Agent] | None:
        """Check and add a type; returns its Agent class (None for a factory function)."""
        if not isinstance(agent_type, str) or not agent_type or "/" in agent_type:
            raise ValueError(f"agent type must be a non-empty str without '/', got {agent_type!r}")
        if agent_type in self.types:
            raise ValueError(f"agent type {agent_type!r} is already registered")
        if not callable(factory):
            raise TypeError(f"factory for {agent_type!r} must be callable, got {factory!r}")
        cls = factory if isinstance(factory, type) else None
        if cls is not None and not issubclass(cls, Agent):
            raise TypeError(f"{cls.__name__} is not an engine.Agent subclass")
        check_mailbox(capacity, policy)
        entry = AgentType(agent_type, factory, cls, capacity, policy)
        if balance is not None:
            if self.balancer is None:
                self.balancer = Router()
            self.balancer.set_policy(entry.name, balance)  # RoutingError for unknown names
            entry.balanced = True
        self.types[entry.name] = entry
        return cls

    def entry(self, agent_type: str) -> AgentType:
        t = self.types.get(agent_type)
        if t is None:
            raise UndeliverableError(
                f"no agent type {agent_type!r} is registered (registered: {self.known()})"
            )
        return t

    def known(self) -> str:
        return ", ".join(sorted(self.types)) or "none"

    def live(self) -> list[Agent]:
        return [a for t in self.types.values() for a in t.instances.values()]

    def gauges(self) -> dict[str, int]:
        instances = self.live()
        return {
            "agents": self.count,
            "agent_types": len(self.types),
            "busy_agents": sum(1 for a in instances if a._busy),
            "queued": sum(len(a._mb) for a in instances if a._mb),
        }

    def full(self) -> list[AgentId]:
        """Live agents whose mailbox is full."""
        return [
            agent.id
            for t in list(self.types.values())
            for agent in list(t.instances.values())
            if agent._mb is not None and len(agent._mb) >= t.capacity
        ]

    def get(self, agent_id: AgentId) -> Agent | None:
        t = self.types.get(agent_id.type)
        return None if t is None else t.instances.get(agent_id.key)

    # -- creation ------------------------------------------------------------------
    def create(self, t: AgentType, agent_id: AgentId) -> Agent:
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
        agent.runtime = self.owner
        agent._busy = False
        agent._mb = None
        agent._wait = None
        agent._task = None
        agent._current = None
        agent._tick = self.books.seq
        t.instances[agent_id.key] = agent
        self.count += 1
        if t.balanced:
            assert self.balancer is not None
            self.balancer.add_agent(agent_id)
        if self.hooks.on_spawn:
            self.hooks.call("on_spawn", agent)
        if self.max_agents is not None and self.count > self.max_agents:
            self._evict_lru(agent)
        return agent

    async def start(self, agent: Agent) -> None:
        """Run ``on_start`` with the agent marked busy (messages queue meanwhile)."""
        agent._busy = True
        books = self.books
        books.active += 1
        try:
            await agent.on_start()
        except BaseException:
            if self.get(agent.id) is agent:
                self.forget(agent)
            self.mailboxes.fail(agent, f"{agent.id} failed to start")
            raise
        finally:
            books.active -= 1
            self.mailboxes.release(agent)

    async def ensure(self, t: AgentType, agent_id: AgentId) -> Agent:
        """Create ``agent_id`` (absent) and start it; a failed start raises what a
        sender sees."""
        agent = self.create(t, agent_id)
        if agent._has_start:
            try:
                await self.start(agent)
            except Exception as exc:
                raise self.calls.failed(exc) from exc
        return agent

    async def spawn_many(self, specs: Iterable[AgentId | Spawn]) -> list[Agent]:
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
            self.entry(aid.type)
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
                t = self.types[aid.type]
                agent = t.instances.get(aid.key)
                if agent is None:
                    agent = self.create(t, aid)
                    if agent._has_start:
                        starting.append(self.start(agent))
                out[aid] = agent
            if starting:
                results = await asyncio.gather(*starting, return_exceptions=True)
                for r in results:
                    if isinstance(r, Exception):
                        raise remote_error(r) from r
                    if isinstance(r, BaseException):
                        raise r
        return [out[a] for a in order]

    # -- removal -------------------------------------------------------------------
    def forget(self, agent: Agent) -> None:
        t = self.types[agent.id.type]
        del t.instances[agent.id.key]
        self.count -= 1
        if t.balanced:
            assert self.balancer is not None
            self.balancer.remove_agent(agent.id)

    def _evict_lru(self, keep: Agent) -> None:
        """Evict the oldest eighth of idle agents (amortised O(log n) per creation)."""
        assert self.max_agents is not None
        idle = [a for a in self.live() if not a._busy and not a._mb and a is not keep]
        excess = self.count - self.max_agents
        n = min(len(idle), max(excess, self.max_agents // 8, 1))
        if n <= 0:
            return
        idle.sort(key=lambda a: a._tick)
        victims = idle[:n]
        for agent in victims:
            self.forget(agent)
        if any(a._has_stop for a in victims) or self.hooks.on_stop:
            self.in_background(self.stop(victims))

    async def stop(self, agents: Sequence[Agent]) -> None:
        """Call ``on_stop`` of ``agents`` (errors logged) and the ``on_stop`` hooks."""
        stopping = [a.on_stop() for a in agents if a._has_stop]
        if stopping:
            for r in await asyncio.gather(*stopping, return_exceptions=True):
                if isinstance(r, Exception):
                    log.error("on_stop raised", exc_info=r)
        if self.hooks.on_stop:
            for agent in agents:
                self.hooks.call("on_stop", agent)

    def clear(self) -> list[Agent]:
        """Drop every instance; returns them (to stop)."""
        agents = self.live()
        for t in self.types.values():
            t.instances.clear()
        self.count = 0
        return agents

    def in_background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
