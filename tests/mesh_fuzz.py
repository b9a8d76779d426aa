"""A hypothesis state machine around :class:`~engine.mesh.BrokerCore` (tests/test_mesh_fuzz.py).

Honest clients and nodes exchange valid traffic while attackers send anything: random
bytes, garbage after valid headers, forged replies, ACKs and NACKs for other peers' ids,
CANCELs of other clients' requests, registrations that claim names, origins and roles
not theirs, oversized fields. Time only moves when a rule says so. After every step:

- the core never raised (``stats["internal_errors"] == 0``);
- every table stays within its configured bound;
- no peer received a message not addressed to it (a reply to a request it did not make,
  a delivery of a type it does not host, an ACK/NACK of an id it never submitted);
- no submission of an honest client got more than one answer.

At the end the honest peers keep working while time runs out every timeout, and every
submission the broker accepted from an undisturbed honest client got exactly one answer:
a REPLY, an ACK (one-way and topic messages) or a final NACK (which a dead letter also
gets).
"""

from __future__ import annotations

import contextlib
import itertools
from collections import defaultdict
from typing import Any

import msgspec
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from engine.mesh import BrokerConfig, BrokerCore
from engine.mesh import protocol as P
from engine.mesh._core_base import MAX_CLAIMS, MAX_WARNED
from engine.mesh.protocol import FrameKind, NackCode, Role
from engine.messages import AgentId, Codec, Envelope, Kind, MessageId, TopicId, encode_payload

__all__ = ["CONFIG", "BrokerMachine"]

CONFIG = BrokerConfig(
    heartbeat=0.1,
    max_attempts=3,
    client_credit=6,
    max_queued=40,
    max_queued_bytes=16 * 1024,
    max_peer_bytes=6 * 1024,
    max_peers=6,
    max_node_credit=3,
    route_timeout=0.4,
    startup_grace=0.2,
    delivery_timeout=0.5,
    batch=64,
    max_sticky=8,
    max_tenants=3,
    client_rate=200.0,
    client_burst=8.0,
)
TYPES = ["a", "b", "c"]
CLIENTS = [b"c0", b"c1"]
NODES = [b"n0", b"n1"]
ATTACKERS = [b"x0", b"x1", b"x2"]
HONEST = CLIENTS + NODES
NAMES = ["c0", "c1", "n0", "n1", "x", "y"]
ORIGINS = ["c0", "c1", "x", "y"]
FINAL = frozenset(int(c) for c in NackCode) - {int(NackCode.BUSY)}
codec = Codec()


class Ops:
    """Reads operations out of the bytes hypothesis drew (shrinking those shrinks them)."""

    __slots__ = ("data", "i")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def __bool__(self) -> bool:
        return self.i < len(self.data)

    def u8(self) -> int:
        if self.i >= len(self.data):
            return 0
        self.i += 1
        return self.data[self.i - 1]

    def pick(self, items: list[Any]) -> Any:
        return items[self.u8() % len(items)]

    def blob(self, limit: int) -> bytes:
        n = self.u8() % (limit + 1)
        out = self.data[self.i : self.i + n]
        self.i += n
        return out

    def mid(self) -> MessageId:
        return MessageId(self.pick(ORIGINS), self.u8() % 24)


def _junk(ops: Ops) -> list[bytes]:
    shape = ops.u8() % 4
    if shape == 0:
        return [ops.blob(24) for _ in range(ops.u8() % 4)]
    if shape == 1:  # a valid header (any kind, signed or not), garbage bodies
        return [P.header(ops.u8()), *(ops.blob(24) for _ in range(ops.u8() % 3))]
    if shape == 2:  # nested very deep
        return [P.header(ops.pick(list(FrameKind))), b"\x91" * 2000 + b"\xc0"]
    value = ops.pick([[1, [2, [3]]], {"name": 1}, "x" * 300, -1, 2**40, [[None] * 3]])
    return [P.header(ops.pick(list(FrameKind))), msgspec.msgpack.encode(value)]


def _register_body(ops: Ops) -> bytes:
    fields: dict[str, Any] = {"name": ops.pick(NAMES)}
    for key in ops.blob(8):
        k = key % 9
        if k == 0:
            fields["role"] = ops.pick([r.value for r in Role] + ["admin"])
        elif k == 1:
            fields["types"] = [ops.pick([*TYPES, "t" * 300, ""]) for _ in range(ops.u8() % 4)]
        elif k == 2:
            fields["subscriptions"] = [ops.pick(["t.*", "#", "t.x", "..", "a..b"])]
        elif k == 3:
            fields["origins"] = [ops.pick(ORIGINS) for _ in range(ops.u8() % 3)]
        elif k == 4:
            fields["credit"] = ops.pick([-2, 0, 3, 10**6])
        elif k == 5:
            fields["heartbeat_ms"] = ops.pick([0, 1, 100, 10**9])
        elif k == 6:
            fields["instance"] = ops.pick(["", "x-token", "y-token"])
        elif k == 7:
            fields["held"] = [ops.mid() for _ in range(ops.u8() % 4)]
        else:
            fields["resume"] = [ops.mid() for _ in range(ops.u8() % 4)]
    return msgspec.msgpack.encode(fields)


class BrokerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.core = BrokerCore(CONFIG, now=0.0, wall=1e6)
        self.seq = itertools.count(1)
        self.registered: set[bytes] = set()
        self.types: dict[bytes, list[str]] = {}
        self.submitted: dict[bytes, set[MessageId]] = defaultdict(set)  # by ident
        self.delivered: dict[bytes, set[MessageId]] = defaultdict(set)
        self.holding: dict[bytes, dict[MessageId, Envelope]] = defaultdict(dict)
        self.accepted: dict[MessageId, bytes] = {}  # honest client submissions -> client
        self.answers: dict[MessageId, int] = defaultdict(int)
        self.disturbed: set[bytes] = set()
        self.tokens: dict[bytes, str] = {}
        for ident in HONEST:  # the honest peers start registered, nodes hosting every type
            self._register_honest(ident, TYPES)

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, ident: bytes, frames: list[bytes]) -> None:
        if ident in ATTACKERS and frames and frames[0][:4] == P.SIGNATURE and len(frames) > 1:
            kind = frames[0][4] & 0x7F if len(frames[0]) == 5 else 0
            if kind == FrameKind.DELIVER:  # ids an attacker submits are its own to be answered
                for body in frames[1:]:
                    with contextlib.suppress(Exception):
                        self.submitted[ident].add(codec.decode(body).id)
        self.core.receive(ident, frames, self.now)
        self._collect()

    def _collect(self) -> None:
        out = self.core.output()
        for ident, frames in out.messages:
            self._check_message(ident, frames)

    def _check_message(self, ident: bytes, frames: list[bytes]) -> None:
        kind, bodies, _ = P.parse(frames)
        core = self.core
        if kind is FrameKind.REPLY:
            for body in bodies:
                env = codec.decode(body)
                corr = env.correlation
                assert corr is not None
                owner = core.origins.get(corr.origin)
                assert owner is not None and owner.ident == ident, "a reply to a non-owner"
                assert corr in self._submitted_by(ident), "a reply to a request it did not make"
                self._answered(ident, corr)
        elif kind is FrameKind.DELIVER:
            peer = core.peers.get(ident)
            assert peer is not None, "a delivery to a peer not registered"
            for body in bodies:
                env = codec.decode(body)
                if env.kind is Kind.CANCEL:
                    assert env.correlation in self.delivered[ident], "a CANCEL of a stranger's"
                    continue
                if env.recipient is not None:
                    assert env.recipient.type in peer.slots, "a delivery of a type not hosted"
                else:
                    assert peer.patterns, "a topic copy to a peer without subscriptions"
                self.delivered[ident].add(env.id)
                if ident in NODES:
                    self.holding[ident][env.id] = env
        elif kind is FrameKind.ACK:
            for mid in P.decode_ids(bodies):
                assert mid in self._submitted_by(ident), "an ACK of an id it never submitted"
                self._answered(ident, mid)
        elif kind is FrameKind.NACK:
            for item in P.decode_nacks(bodies):
                assert item.id in self._submitted_by(ident), "a NACK of an id it never submitted"
                if item.code == NackCode.BUSY:
                    self.accepted.pop(item.id, None)
                elif item.code in FINAL:
                    self._answered(ident, item.id)

    def _submitted_by(self, ident: bytes) -> set[MessageId]:
        token = self.tokens.get(ident)
        if not token:
            return self.submitted[ident]
        same = [i for i, t in self.tokens.items() if t == token]
        return set().union(*(self.submitted[i] for i in same))

    def _answered(self, ident: bytes, mid: MessageId) -> None:
        if ident in CLIENTS and mid in self.accepted:
            self.answers[mid] += 1
            assert self.answers[mid] <= 1, f"{mid} answered twice"

    # -- honest peers ----------------------------------------------------------------------

    @rule(data=st.binary(min_size=1, max_size=48))
    def honest_traffic(self, data: bytes) -> None:
        ops = Ops(data)
        while ops:
            op = ops.u8() % 16
            if op < 2:
                self._register_honest(
                    ops.pick(HONEST), [t for i, t in enumerate(TYPES) if ops.u8() >> i & 1] or ["a"]
                )
            elif op < 6:
                self._submit(ops)
            elif op == 6:
                self._cancel(ops)
            elif op < 12:
                self._node_answers(ops)
            elif op < 14:
                self._send(ops.pick(HONEST), P.frames(FrameKind.HEARTBEAT))
            elif op == 14:
                self._time_passes(ops.pick([0.02, 0.05, 0.1]), beat=True)
            elif ops.u8() < 16:  # rarely: an honest peer goes away
                self._honest_leaves(ops.pick(HONEST), bool(ops.u8() & 1))

    def _register_honest(self, ident: bytes, types: list[str]) -> None:
        name = ident.decode()
        if ident in CLIENTS:
            reg = P.Register(
                name, role=Role.ORCHESTRATOR, origins=[name], instance=f"{name}-secret"
            )
        else:
            reg = P.Register(
                name,
                types=types,
                subscriptions=["t.*"],
                credit=3,
                heartbeat_ms=100,
                instance=f"{name}-secret",
            )
            self.types[ident] = types
        self.tokens[ident] = reg.instance
        self._send(ident, P.frames(FrameKind.REGISTER, P.encode(reg)))
        if ident in self.core.peers:
            self.registered.add(ident)

    def _submit(self, ops: Ops) -> None:
        clients = [c for c in CLIENTS if c in self.registered]
        if not clients:
            return
        client = ops.pick(clients)
        origin = client.decode()
        how = ops.pick(["send", "tell", "topic", "send-any"])
        type_ = ops.pick([*TYPES, *TYPES, "nobody"])
        tenant = ops.pick(["", "t1", "t2", "t3", "t4"])
        priority = ops.u8() % 7 - 3
        size = ops.u8() * 12
        bodies = []
        for _ in range(1 + ops.u8() % 4):
            mid = MessageId(origin, next(self.seq))
            env = Envelope(
                mid,
                Kind.SEND if how.startswith("send") else Kind.PUBLISH,
                recipient=None
                if how == "topic"
                else AgentId(type_, "*" if how == "send-any" else f"k{mid.seq % 3}"),
                topic=TopicId("t.x") if how == "topic" else None,
                priority=priority,
                tenant=tenant,
                payload=encode_payload(b"p" * size),
            )
            bodies.append(codec.encode(env))
            self.submitted[client].add(mid)
            self.accepted[mid] = client
        self._send(client, P.frames(FrameKind.DELIVER, *bodies))

    def _cancel(self, ops: Ops) -> None:
        """An honest client cancels one of its own submissions."""
        pending = sorted((m for m, c in self.accepted.items() if not self.answers[m]), key=str)
        if not pending:
            return
        target = ops.pick(pending)
        client = self.accepted[target]
        mid = MessageId(client.decode(), next(self.seq))
        self.submitted[client].add(mid)
        env = Envelope(mid, Kind.CANCEL, correlation=target)
        self._send(client, P.frames(FrameKind.DELIVER, codec.encode(env)))

    def _node_answers(self, ops: Ops) -> None:
        nodes = [n for n in NODES if self.holding[n]]
        if not nodes:
            return
        node = ops.pick(nodes)
        mid = ops.pick(sorted(self.holding[node], key=str))
        how = ops.pick(["reply", "reply", "reply", "ack", "reject", "expired", "weird"])
        env = self.holding[node].pop(mid)
        if how == "reply" or (how == "ack" and env.kind is Kind.SEND):
            answer = Envelope(MessageId(node.decode(), next(self.seq)), Kind.REPLY, correlation=mid)
            self._send(node, P.frames(FrameKind.REPLY, codec.encode(answer)))
        elif how == "ack":
            self._send(node, P.frames(FrameKind.ACK, P.encode_ids([mid])))
        else:
            code = {"reject": NackCode.REJECTED, "expired": NackCode.EXPIRED, "weird": 99}[how]
            self._send(
                node, P.frames(FrameKind.NACK, P.encode_nacks([P.NackItem(mid, int(code), "x")]))
            )

    def _honest_leaves(self, ident: bytes, unreachable: bool) -> None:
        self.disturbed.add(ident)
        self.registered.discard(ident)
        self.holding[ident].clear()
        if unreachable:
            self.core.unreachable(ident, self.now)
            self._collect()
        else:
            self._send(ident, P.disconnect(P.DisconnectCode.LEAVING, "bye"))

    @rule(dt=st.sampled_from([0.05, 0.1, 0.3, 1.0]), beat=st.booleans())
    def time_passes(self, dt: float, beat: bool) -> None:
        self._time_passes(dt, beat)

    def _time_passes(self, dt: float, beat: bool) -> None:
        if beat:
            for ident in self.registered:
                self.core.receive(ident, P.frames(FrameKind.HEARTBEAT), self.now)
        self.now += dt
        self.core.tick(self.now, self.now + 1e6)
        self._collect()
        for ident in list(self.registered):
            if ident not in self.core.peers:  # silent too long: the broker dropped it
                self.registered.discard(ident)
                self.disturbed.add(ident)
                self.holding[ident].clear()

    # -- attackers -------------------------------------------------------------------------

    @rule(data=st.binary(min_size=1, max_size=64))
    def hostile_traffic(self, data: bytes) -> None:
        ops = Ops(data)
        while ops:
            ident = ops.pick(ATTACKERS)
            op = ops.u8() % 4
            if op == 0:
                self._send(ident, _junk(ops))
            elif op == 1:
                body = _register_body(ops)
                with contextlib.suppress(Exception):
                    self.tokens[ident] = msgspec.msgpack.decode(body).get("instance", "")
                self._send(ident, P.frames(FrameKind.REGISTER, body))
            else:
                self._forge(ident, ops)

    def _forge(self, ident: bytes, ops: Ops) -> None:
        target = ops.mid()
        kind = ops.pick(["reply", "ack", "nack", "cancel", "submit-foreign", "credit", "submit"])
        code = ops.u8() % 10
        if kind == "reply":
            body = codec.encode(
                Envelope(MessageId("x", target.seq), Kind.REPLY, correlation=target)
            )
            frames = P.frames(FrameKind.REPLY, body)
        elif kind == "ack":
            frames = P.frames(FrameKind.ACK, P.encode_ids([target]))
        elif kind == "nack":
            frames = P.frames(FrameKind.NACK, P.encode_nacks([P.NackItem(target, code, "")]))
        elif kind == "credit":
            frames = P.frames(FrameKind.CREDIT, P.encode(code * 1000))
        else:
            mine = MessageId("x", next(self.seq))
            if kind == "cancel":
                env = Envelope(mine, Kind.CANCEL, correlation=target)
            else:
                mid = target if kind == "submit-foreign" else mine
                env = Envelope(mid, Kind.SEND, recipient=AgentId(TYPES[code % 3], "k"))
            frames = P.frames(FrameKind.DELIVER, codec.encode(env))
        self._send(ident, frames)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def never_raised_and_bounded(self) -> None:
        core, c = self.core, CONFIG
        assert core.stats["internal_errors"] == 0
        assert len(core.peers) <= c.max_peers
        assert len(core.pending_regs) <= c.max_peers
        assert len(core.live) <= c.max_queued
        assert core.live_bytes <= c.max_queued_bytes
        for peer in core.peers.values():
            assert 0 <= peer.owned <= c.client_credit
            assert 0 <= peer.owned_bytes <= c.max_peer_bytes
            assert len(peer.inflight) <= max(peer.window, c.max_node_credit)
        assert len(core.dispatch.sticky) <= c.max_sticky
        assert core.dispatch.tenants <= c.max_tenants
        assert len(core.claims) <= MAX_CLAIMS and len(core.resumes) <= MAX_CLAIMS
        assert len(core._warned) <= MAX_WARNED + 1
        assert len(core.dispatch.tasks) <= len(core.live) * c.max_peers
        for peer in core.peers.values():  # the counters match the tasks
            queued = [d for d in core.dispatch.tasks.values() if d.target is peer]
            assert peer.waiting == sum(peer.inflight.get(d.mid) is not d for d in queued)

    def teardown(self) -> None:
        """Run every timeout out with the honest peers working; then each accepted
        submission of an undisturbed honest client has exactly one answer."""
        waiting = [m for m, c in self.accepted.items() if c not in self.disturbed]
        limit = int((CONFIG.delivery_timeout * CONFIG.max_attempts + 2) / 0.1) + 5
        for _ in range(limit):
            if all(self.answers[m] for m in waiting):
                break
            for node in NODES:
                for mid in list(self.holding[node]):
                    del self.holding[node][mid]
                    answer = Envelope(
                        MessageId(node.decode(), next(self.seq)), Kind.REPLY, correlation=mid
                    )
                    self.core.receive(
                        node, P.frames(FrameKind.REPLY, codec.encode(answer)), self.now
                    )
                    self._collect()
            for ident in self.registered:
                self.core.receive(ident, P.frames(FrameKind.HEARTBEAT), self.now)
            self.now += 0.1
            self.core.tick(self.now, self.now + 1e6)
            self._collect()
        assert self.core.stats["internal_errors"] == 0
        for mid in waiting:
            if self.accepted.get(mid) is not None and self.accepted[mid] not in self.disturbed:
                assert self.answers[mid] == 1, f"{mid} got {self.answers[mid]} answers"
