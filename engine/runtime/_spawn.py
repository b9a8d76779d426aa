"""Spawn requests and their dependency order for ``Runtime.spawn_many``."""

from __future__ import annotations

import msgspec

from engine.errors import CycleError
from engine.messages import AgentId

__all__ = ["Spawn", "levels"]


class Spawn(msgspec.Struct, frozen=True):
    """A spawn request for :meth:`Runtime.spawn_many`: ``needs`` are spawned (started) first."""

    id: AgentId
    needs: tuple[AgentId, ...] = ()


def levels(needs: dict[AgentId, tuple[AgentId, ...]]) -> list[list[AgentId]]:
    """Topological levels of the spawn graph (Kahn); CycleError names a cycle."""
    pending = {a: {d for d in n if d in needs} for a, n in needs.items()}
    out: list[list[AgentId]] = []
    done: set[AgentId] = set()
    while pending:
        ready = [a for a, d in pending.items() if d <= done]
        if not ready:
            raise CycleError(_find_cycle(pending))  # type: ignore[arg-type]
        for a in ready:
            del pending[a]
        done.update(ready)
        out.append(ready)
    return out


def _find_cycle(pending: dict[AgentId, set[AgentId]]) -> list[str]:
    start = next(iter(pending))
    seen: list[AgentId] = []
    node = start
    while node not in seen:
        seen.append(node)
        node = next(d for d in pending[node] if d in pending)
    cycle = [*seen[seen.index(node) :], node]
    return [str(a) for a in cycle]
