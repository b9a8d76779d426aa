"""Routing hot path: by-type picks, direct sends and topic fan-out through the router."""

from __future__ import annotations

import _common

opts = _common.args()
_common.require("engine.routing", "routing")
if opts.check:
    raise SystemExit(0)

import numpy as np  # noqa: E402

from engine.messages import AgentId  # noqa: E402
from engine.routing import KIND_DIRECT, KIND_TOPIC, KIND_TYPE, Router  # noqa: E402

r = Router()
agents = [AgentId(f"type{t}", f"k{k}") for t in range(50) for k in range(8)]
for a in agents:
    r.add_agent(a)
for t in range(0, 50, 2):
    r.set_policy(f"type{t}", "least_outstanding")
for i in range(500):
    r.subscribe(f"region{i % 20}.*.event{i % 9}", subscriber=i)
    r.subscribe(f"region{i % 20}.#", subscriber=10_000 + i)
topics = [f"region{i % 20}.node{i % 31}.event{i % 9}" for i in range(4096)]
handles = r.topic_handles(topics)
kinds = np.array([(KIND_DIRECT, KIND_TYPE, KIND_TOPIC)[i % 3] for i in range(4096)], np.uint8)
targets = np.array(
    [
        (r.handle(agents[i % len(agents)]), r.type_handle(f"type{i % 50}"), int(handles[i]))[i % 3]
        for i in range(4096)
    ],
    dtype=np.int64,
)


def step() -> None:
    r.route_many(kinds, targets)
    r.match_many(handles)
    for t in range(50):  # single calls, as a runtime without batching makes them
        slot = r.pick(f"type{t}")
        r.ack(slot)
    for topic in topics[:200]:
        r.match(topic)


n = _common.repeat(opts.seconds, step)
print(f"routing: {n} steps ({n * 8192} batch decisions, {n * 250} single calls)")
