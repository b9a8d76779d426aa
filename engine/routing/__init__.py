"""Routing: direct delivery, by-type load balancing and topic pub/sub, in native tables.

``Router`` is the compiled ``RouterC`` when ``engine._native._router`` is built, else the
pure-Python reference ``RouterPy``; both take the same inputs and give the same answers.

Single calls::

    r = Router()
    slot = r.add_agent(AgentId("echo", "a"))   # dense int >= 0; same id -> same slot
    r.slot(AgentId("echo", "a")); r.agent(slot); r.remove_agent(AgentId("echo", "a"))
    r.set_policy("echo", "least_outstanding")  # or "round_robin" (default)
    s = r.pick("echo"); r.ack(s); r.outstanding(s)
    sid = r.subscribe("pings.*", subscriber=7); r.match("pings.eu") == [7]; r.unsubscribe(sid)

Batches (no Python object is touched per decision in the compiled router): intern
names once into int handles (``handle(agent)``, ``type_handle(type)``,
``topic_handle(topic)`` / ``topic_handles(topics)``), then

    offsets, dests = r.route_many(kinds, targets)   # kinds: KIND_DIRECT/KIND_TYPE/KIND_TOPIC
    offsets, subs = r.match_many(topic_handles)

Request ``i``'s destinations are ``dests[offsets[i]:offsets[i + 1]]`` (CSR): one slot for a
deliverable direct or by-type request (none if the agent is gone or the type has no
instances), the ascending unique subscribers for a topic. See docs/routing.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine._args.routing import (
    KIND_DIRECT,
    KIND_TOPIC,
    KIND_TYPE,
    MAX_TOPIC_LENGTH,
    POLICIES,
    parse_pattern,
    parse_topic,
)
from engine._native import pick
from engine.routing._router_py import RouterPy

if TYPE_CHECKING:
    from engine._native._router import Router as _RouterC

__all__ = [
    "KIND_DIRECT",
    "KIND_TOPIC",
    "KIND_TYPE",
    "MAX_TOPIC_LENGTH",
    "POLICIES",
    "Router",
    "RouterC",
    "RouterPy",
    "parse_pattern",
    "parse_topic",
]

#: The compiled router class, or ``None`` when ``engine._native._router`` is not available.
RouterC: type[_RouterC] | None
#: The router to use: ``RouterC`` when built, else ``RouterPy``.
Router: type[_RouterC] | type[RouterPy]
RouterC, Router = pick("_router", "Router", RouterPy)
