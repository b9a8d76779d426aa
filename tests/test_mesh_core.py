"""The broker's sans-IO core, driven with a fake clock: fairness, bounds, CANCEL, duplicates,
recovery after a restart, HMAC replays. No sockets, no threads, no wall-clock time."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
from mesh_core import Harness, env

from engine.mesh import BrokerConfig
from engine.mesh import protocol as P
from engine.mesh._signing import Keys
from engine.mesh._store import PendingMessage, pending_key
from engine.mesh.peer_core import Delivered, PeerCore, Replied, Welcomed
from engine.mesh.protocol import DisconnectCode, FrameKind, NackCode, Role
from engine.messages import AgentId, Envelope, Kind, MessageId, decode

WORK = AgentId("work", "*")
ORCH = Role.ORCHESTRATOR


def _serve(h: Harness, node: bytes, until: int, record: Callable[[Envelope], Any]) -> None:
    """``node`` answers everything delivered to it until ``until`` deliveries were seen."""
    seen = 0
    while seen < until:
        got = h.delivered(node)
        assert got, f"nothing delivered after {seen} of {until}"
        for e in got:
            record(e)
            h.reply_to(node, e)
        seen += len(got)


@pytest.mark.parametrize(("weight", "share"), [(1, 0.5), (3, 0.75)])
def test_a_heavy_tenant_cannot_starve_a_light_one(weight: int, share: float) -> None:
    """100:1 load: while the light tenant has work queued, its share of dispatches is its
    weight's share (issue: within 10% of it)."""
    h = Harness(BrokerConfig(heartbeat=0.1, client_credit=4096, tenant_weights={"light": weight}))
    h.register(b"N", "node", types=["work"], credit=4)
    h.register(b"H", "heavy", role=ORCH, origins=["H"])
    h.register(b"L", "light", role=ORCH, origins=["L"])
    h.submit(b"H", *(env(MessageId("H", i), to=WORK, tenant="heavy") for i in range(2000)))
    first = h.delivered(b"N")  # the window filled before the light tenant arrived
    h.submit(b"L", *(env(MessageId("L", i), to=WORK, tenant="light") for i in range(20)))
    order: list[str] = [e.tenant for e in first]
    for e in first:
        h.reply_to(b"N", e)
    _serve(h, b"N", 2020 - len(first), lambda e: order.append(e.tenant))
    backlogged = order[len(first) : max(i for i, t in enumerate(order) if t == "light") + 1]
    light = backlogged.count("light") / len(backlogged)
    assert abs(light - share) <= 0.1 * share, (light, share)
    assert len(h.replies(b"H")) == 2000 and len(h.replies(b"L")) == 20


def test_priority_orders_within_a_tenant_and_deadlines_expire() -> None:
    h = Harness()
    h.register(b"N", "node", types=["work"], credit=1)
    h.register(b"C", "client", role=ORCH, origins=["C"])
    h.submit(b"C", env(MessageId("C", 0), to=WORK))  # takes the one slot
    h.submit(
        b"C",
        env(MessageId("C", 1), to=WORK, priority=5),
        env(MessageId("C", 2), to=WORK, priority=-5),
        env(MessageId("C", 3), to=WORK, deadline=1_000_000.0 + 0.05),  # WALL + 0.05
    )
    order = []
    h.advance(0.1)  # the third's deadline passes while it waits
    for _ in range(3):
        (e,) = h.delivered(b"N")
        order.append(e.id.seq)
        h.reply_to(b"N", e)
    assert order == [0, 2, 1]
    assert [(n.id.seq, n.code) for n in h.nacks(b"C")] == [(3, NackCode.EXPIRED)]


def test_tables_keyed_by_what_a_peer_said_go_with_the_peer() -> None:
    h = Harness(BrokerConfig(heartbeat=0.1, route_timeout=0.5))
    h.register(
        b"N", "node", types=[f"t{i}" for i in range(P.MAX_TYPES)], subscriptions=["a.*"], credit=4
    )
    h.register(b"C", "client", role=ORCH, origins=["C"])
    h.submit(b"C", env(MessageId("C", 1), to=AgentId("t1", "key")))
    core = h.core
    assert core.names and core.origins and core.known and core.dispatch.sub_peer
    h.kind(b"N", FrameKind.DISCONNECT, P.encode(P.Disconnect(1)))
    h.kind(b"C", FrameKind.DISCONNECT, P.encode(P.Disconnect(1)))
    h.advance(1.0)
    assert not core.peers and not core.names and not core.origins
    assert not core.known and not core.parked and not core.dispatch.slot_peer
    assert not core.dispatch.sub_peer and not core.dispatch.tasks and not core.live


def test_the_router_is_rebuilt_when_dead_type_names_pile_up() -> None:
    h = Harness(BrokerConfig(heartbeat=0.1, route_timeout=0.2, max_peers=8))
    for round_ in range(20):
        ident = b"n%d" % round_
        h.register(
            ident, f"node{round_}", types=[f"r{round_}-{i}" for i in range(P.MAX_TYPES)], credit=1
        )
        h.kind(ident, FrameKind.DISCONNECT, P.encode(P.Disconnect(1)))
        h.advance(0.5)
    assert len(h.core.dispatch._types_ever) <= 1024 + P.MAX_TYPES


def test_a_duplicate_id_runs_once_and_leaves_balancing_even() -> None:
    h = Harness()
    h.register(b"A", "a", types=["work"], credit=8)
    h.register(b"B", "b", types=["work"], credit=8)
    h.register(b"C", "client", role=ORCH, origins=["C"])
    body = env(MessageId("C", 1), to=WORK)
    h.submit(b"C", body, body)
    h.submit(b"C", body)
    got = h.delivered(b"A") + h.delivered(b"B")
    assert [e.id for e in got] == [MessageId("C", 1)]
    node = b"A" if h.core.peers[b"A"].inflight else b"B"
    h.reply_to(node, got[0])
    assert len(h.replies(b"C")) == 1
    router = h.core.dispatch.router
    assert [router.outstanding(s) for p in h.core.peers.values() for s in p.slots.values()] == [
        0,
        0,
    ]


def test_cancel_is_scoped_to_its_submitter_and_costs_no_scan() -> None:
    n = 512
    h = Harness(BrokerConfig(heartbeat=0.1, client_credit=4096))
    h.register(b"N", "node", types=["work"], credit=1)
    h.register(b"C", "client", role=ORCH, origins=["C"])
    h.register(b"X", "other", role=ORCH, origins=["X"])
    h.submit(b"C", *(env(MessageId("C", i), to=WORK) for i in range(n)))
    foreign = [env(MessageId("X", i), Kind.CANCEL, correlation=MessageId("C", i)) for i in range(n)]
    h.submit(b"X", *foreign)
    assert not h.nacks(b"C") and h.core.stats["unauthorized"] == n  # nothing cancelled
    own = [env(MessageId("C", n + i), Kind.CANCEL, correlation=MessageId("C", i)) for i in range(n)]
    lines = _count_lines(lambda: h.submit(b"C", *own))
    assert lines < 150 * n, f"{lines / n:.0f} lines per CANCEL"
    nacks = h.nacks(b"C")
    assert len(nacks) == n - 1 and {x.code for x in nacks} == {NackCode.CANCELLED}
    running, stop = h.delivered(b"N")  # the one in flight is told to stop
    assert (running.kind, stop.kind, stop.correlation) == (Kind.SEND, Kind.CANCEL, running.id)
    h.reply_to(b"N", running)
    assert len(h.replies(b"C")) == 1


def _count_lines(fn: Callable[[], Any]) -> int:
    """Python lines executed by ``fn`` (a cost that does not depend on the machine)."""
    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    before = sys.gettrace()  # coverage's tracer under `make test`: put it back afterwards
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(before)
    return count


def test_a_client_cannot_submit_under_another_clients_origin() -> None:
    """Otherwise it could overwrite the other's stored pending message (same key)."""
    h = Harness(persist=True)
    h.register(b"A", "a", role=ORCH, origins=["A"])
    h.register(b"B", "b", role=ORCH, origins=["B"])
    h.submit(b"A", env(MessageId("A", 1), to=AgentId("nobody", "k"), payload="mine"))
    h.submit(b"B", env(MessageId("A", 1), to=AgentId("nobody", "k"), payload="theirs"))
    assert [(x.id, x.code) for x in h.nacks(b"B")] == [(MessageId("A", 1), NackCode.FORBIDDEN)]
    puts = [p for w in h.writes for p in w.put]
    assert [(p.key, bytes(decode(p.envelope).payload)) for p in puts] == [("A:1", b"\xa4mine")]
    assert h.register(b"C", "c", role=ORCH, origins=["A"]).code == DisconnectCode.RETRY


def test_after_a_restart_held_work_goes_back_to_the_node_that_holds_it() -> None:
    h = Harness(BrokerConfig(heartbeat=0.1, startup_grace=1.0))
    x, y = MessageId("C", 1), MessageId("C", 2)
    stored = env(x, to=WORK)
    assert h.core.restore([PendingMessage(pending_key(x), stored)]) == 1
    h.register(b"N2", "n2", types=["work"], credit=8)  # registers first, holds nothing
    h.register(b"C", "client", role=ORCH, origins=["C"], resume=[y])
    h.submit(b"C", env(y, to=WORK), env(x, to=WORK))  # resent after the restart
    assert not h.delivered(b"N2")  # held for their nodes during the grace
    h.register(b"N1", "n1", types=["work"], credit=8, held=[x, y])
    assert sorted(e.id.seq for e in h.delivered(b"N1")) == [1, 2]
    assert not h.delivered(b"N2")
    # unclaimed work is routed once the grace ends
    z = MessageId("C", 3)
    h.core.restore([PendingMessage(pending_key(z), env(z, to=WORK))])
    for _ in range(11):
        h.beat(b"N1", b"N2", b"C")
        h.advance(0.1)
    assert [e.id for e in h.delivered(b"N1") + h.delivered(b"N2")] == [z]


def test_a_peer_heartbeat_is_bounded_and_a_silent_peer_dies() -> None:
    h = Harness(BrokerConfig(heartbeat=0.1))
    welcome = h.register(b"N", "node", types=["work"], credit=4, heartbeat_ms=10**9)
    assert isinstance(welcome, P.Welcome) and welcome.heartbeat_ms == 1000  # 10 x 0.1 s
    peer = PeerCore(name="p", role=Role.WORKER, origin="p", heartbeat=10**6)
    peer.register([], [], 0, 0.0)
    peer.receive(P.frames(FrameKind.REGISTER, P.encode(welcome)), 0.0)
    assert peer.heartbeat == 1.0  # the peer keeps the broker's bound
    h.register(b"C", "client", role=ORCH, origins=["C"])
    h.submit(b"C", env(MessageId("C", 1), to=WORK))
    assert h.delivered(b"N")
    for _ in range(31):
        h.kind(b"C", FrameKind.HEARTBEAT)
        h.advance(0.1)
    assert b"N" not in h.core.peers and h.core.stats["peers_dead"] == 1
    h.register(b"M", "other", types=["work"], credit=4)
    assert [e.attempt for e in h.delivered(b"M")] == [1]


def test_a_delivery_unanswered_past_the_timeout_goes_elsewhere() -> None:
    h = Harness(BrokerConfig(heartbeat=0.1, delivery_timeout=2.0))
    h.register(b"N", "hole", types=["work"], credit=4)
    h.register(b"C", "client", role=ORCH, origins=["C"])
    h.submit(b"C", env(MessageId("C", 1), to=AgentId("work", "k")))
    assert h.delivered(b"N")
    h.register(b"M", "honest", types=["work"], credit=4)
    for _ in range(21):
        for ident in (b"N", b"C", b"M"):
            h.kind(ident, FrameKind.HEARTBEAT)
        h.advance(0.1)
    assert [e.kind for e in h.delivered(b"N")] == [Kind.CANCEL]
    (again,) = h.delivered(b"M")
    assert again.attempt == 1 and h.core.stats["timeouts"] == 1
    h.reply_to(b"N", again)  # the hole answers late: not its delivery any more
    assert h.core.stats["unsolicited"] == 1 and not h.replies(b"C")
    h.reply_to(b"M", again)
    assert len(h.replies(b"C")) == 1


def test_the_node_duplicate_cache_is_bounded_in_bytes() -> None:
    core = PeerCore(name="n", role=Role.WORKER, origin="n", heartbeat=0.1, cache_bytes=10_000)
    for i in range(100):
        core.running.add(MessageId("c", i))
        core.answer(MessageId("c", i), b"x" * 1000, float(i))
    assert core.done_bytes <= 10_000 and len(core.done) == 10


# -- HMAC: a broker core and a peer core talking ----------------------------------------


def _pipe(h: Harness, ident: bytes, peer: PeerCore) -> list[Any]:
    """Deliver everything ``peer`` queued to the broker core, and back; the peer's events."""
    events: list[Any] = []
    for msg in peer.take_output():
        h.send(ident, msg)
    for msg in h.inbox.pop(ident, []):
        events += peer.receive(msg, h.now)
    return events


def test_hmac_replays_are_refused() -> None:
    keys = Keys([b"secret"])
    h = Harness(keys=keys)
    node = PeerCore(name="n1", role=Role.WORKER, origin="n1", heartbeat=0.1, keys=keys)
    node.register(["work"], [], 8, 0.0)
    (hello,) = node.take_output()
    captured = list(hello)
    h.send(b"N", hello)
    for msg in h.inbox.pop(b"N"):
        node.receive(msg, h.now)
    assert node.registered and b"N" not in h.core.peers  # active after its first message
    _pipe(h, b"N", node)  # the heartbeat signed in the broker's session
    assert h.core.peers[b"N"].name == "n1"
    client = PeerCore(name="c", role=ORCH, origin="c", heartbeat=0.1, keys=keys)
    client.register([], [], 0, 0.0)
    _pipe(h, b"C", client)
    _pipe(h, b"C", client)
    client.submit(MessageId("c", 1), env(MessageId("c", 1), to=WORK), request=True)
    (deliver,) = client.take_output()
    again = list(deliver)
    h.send(b"C", deliver)
    h.send(b"C", again)  # the same DELIVER replayed, twice
    h.send(b"C", list(again))
    assert h.core.stats["submitted"] == 1 and h.core.stats["malformed"] >= 2
    events = _pipe(h, b"N", node)
    assert [type(e) for e in events] == [Delivered]
    # the node's REGISTER replayed on another connection never becomes a registration
    h.send(b"EVIL", captured)
    h.send(b"EVIL", P.frames(FrameKind.HEARTBEAT))
    for _ in range(4):  # the pending registration expires; the real peers keep beating
        for ident, peer in ((b"N", node), (b"C", client)):
            peer.out.other.append(P.frames(FrameKind.HEARTBEAT))
            _pipe(h, ident, peer)
        h.advance(0.1)
    assert h.core.names["n1"] == b"N" and b"EVIL" not in h.core.peers
    assert not h.core.pending_regs
    reply = env(MessageId("n1", 9), Kind.REPLY, correlation=MessageId("c", 1))
    node.answer(events[0].env.id, reply, h.now)
    _pipe(h, b"N", node)
    assert [type(e) for e in _pipe(h, b"C", client)] == [Replied]


def test_a_client_over_its_rate_gets_busy_with_a_retry_hint() -> None:
    h = Harness(BrokerConfig(heartbeat=0.1, client_rate=10.0, client_burst=2.0))
    h.register(b"N", "node", types=["work"], credit=8)
    h.register(b"C", "client", role=ORCH, origins=["C"])
    h.submit(b"C", *(env(MessageId("C", i), to=WORK) for i in range(3)))
    (busy,) = h.nacks(b"C")
    assert (busy.id.seq, busy.code) == (2, NackCode.BUSY) and 90 <= busy.retry_ms <= 110
    assert len(h.delivered(b"N")) == 2
    h.beat(b"N", b"C")
    h.advance(busy.retry_ms / 1000)
    h.submit(b"C", env(MessageId("C", 2), to=WORK))  # resubmitted after the hint
    assert [e.id.seq for e in h.delivered(b"N")] == [2] and not h.nacks(b"C")


def test_a_reconnect_of_the_same_peer_keeps_its_work() -> None:
    """A node that replaced its socket (same ``instance`` token) takes over its name and
    in-flight work at once; another process claiming the name is told to retry."""
    h = Harness()
    h.register(b"N", "node", types=["work"], credit=4, instance="secret-1")
    h.register(b"C", "client", role=ORCH, origins=["C"])
    h.submit(b"C", env(MessageId("C", 1), to=WORK))
    (request,) = h.delivered(b"N")
    refused = h.register(b"X", "node", types=["work"], credit=4, instance="other")
    assert isinstance(refused, P.Disconnect) and refused.code == DisconnectCode.RETRY
    assert isinstance(
        h.register(b"N2", "node", types=["work"], credit=4, instance="secret-1"), P.Welcome
    )
    assert b"N" not in h.core.peers and h.core.names["node"] == b"N2"
    assert h.core.stats["redelivered"] == 0  # nothing retried: the same process holds it
    h.reply_to(b"N2", request)
    assert [r.correlation for r in h.replies(b"C")] == [MessageId("C", 1)]


def test_an_hmac_peer_can_register_again_on_its_connection() -> None:
    """A runtime announcing a new agent type sends REGISTER again: under HMAC it moves to
    the new session without losing a message."""
    keys = Keys([b"secret"])
    h = Harness(keys=keys)
    node = PeerCore(name="n1", role=Role.WORKER, origin="n1", heartbeat=0.1, keys=keys)
    node.register(["work"], [], 8, 0.0)
    _pipe(h, b"N", node)
    _pipe(h, b"N", node)  # active
    node.register(["work", "more"], [], 8, 0.0)
    _pipe(h, b"N", node)  # the new welcome
    _pipe(h, b"N", node)  # activates the new session
    assert h.core.peers[b"N"].slots.keys() == {"work", "more"}
    node.out.other.append(P.frames(FrameKind.HEARTBEAT))
    before = h.core.stats["malformed"]
    _pipe(h, b"N", node)
    assert h.core.stats["malformed"] == before
    # the broker's messages still in the old session when the peer switched are accepted
    client = PeerCore(name="c", role=ORCH, origin="c", heartbeat=0.1, keys=keys)
    client.register([], [], 0, 0.0)
    _pipe(h, b"C", client)
    _pipe(h, b"C", client)
    node.register(["work"], [], 8, 0.0)
    for msg in node.take_output():
        h.send(b"N", msg)  # REGISTER again: the welcome waits in N's inbox
    client.submit(MessageId("c", 1), env(MessageId("c", 1), to=WORK), request=True)
    _pipe(h, b"C", client)  # delivered to N, still in N's old session
    events = [e for msg in h.inbox.pop(b"N") for e in node.receive(msg, h.now)]
    assert [type(e) for e in events] == [Welcomed, Delivered] or [type(e) for e in events] == [
        Delivered,
        Welcomed,
    ]


def test_a_peer_that_drops_a_subscription_gets_no_more_copies_of_it() -> None:
    """Found by the 10^6 fuzz run: a topic copy queued for a peer that registered again
    without the subscription was later delivered to it."""
    h = Harness()
    h.register(b"S", "sub", subscriptions=["t.*"], credit=0)  # window 0: copies wait
    h.register(b"C", "client", role=ORCH, origins=["C"])
    h.submit(b"C", env(MessageId("C", 1), Kind.PUBLISH, topic="t.x"))
    assert h.core.peers[b"S"].waiting == 1 and not h.acks(b"C")
    h.register(b"S", "sub", credit=8)  # again, subscribing to nothing
    assert h.core.peers[b"S"].waiting == 0 and not h.delivered(b"S")
    assert h.acks(b"C") == [MessageId("C", 1)] and not h.core.live
