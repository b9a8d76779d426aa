"""The broker's protocol logic as a sans-IO core: frames in, frames and store writes out.

:class:`BrokerCore` has no sockets, threads or clock of its own (the h11 / asyncpg
``CoreProtocol`` shape). Its shell (:class:`engine.mesh.Broker`) feeds it what arrives and
carries out what it asks for::

    core.receive(peer, frames, now, user_id)  # each message read (peer = routing id)
    core.tick(now, wall)                      # every few ms: heartbeats, deaths, timeouts
    out = core.output()                       # then: out.writes first, out.messages next
    core.unreachable(peer, now)               # a send to ``peer`` failed: it is gone

Everything a peer sends is hostile until checked: ``receive`` never raises, whatever the
bytes (a bug in the core is logged and counted in ``stats["internal_errors"]``, which the
fuzz tests assert stays 0). Every check looks at the parsed meaning — the frame's kind,
the role bound at registration, the owner of an id — never at a raw byte, and a peer's
identity is its connection (routing id, CURVE key), never a field it wrote.

Rules the core enforces (docs/protocol.md has the long form):

- roles: what each role may send (``protocol.ALLOWED``); under CURVE the role is the key's;
- names and origins belong to the live connection that registered them; only a reconnect
  of the same peer process (same ``instance`` token) takes them over;
- a submission's id must be under one of the submitter's origins; a REPLY, ACK or NACK is
  accepted only from the peer the message was delivered to; replies go to the origin's
  owner;
- every table a peer can grow is bounded (``BrokerConfig``); over a bound the answer is
  NACK BUSY (with a retry hint) or DISCONNECT RETRY;
- every accepted message ends in exactly one answer to its submitter: a REPLY (a SEND),
  an ACK (a PUBLISH, once delivered), or a final NACK (which a dead letter also gets).
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from engine.errors import DecodeError, ProtocolError, RoutingError, TraceContextError
from engine.mesh import protocol as P
from engine.mesh._config import BrokerConfig, TokenBucket
from engine.mesh._dispatch import Dispatcher
from engine.mesh._outbox import Outbox
from engine.mesh._signing import TO_BROKER, TO_PEER, Keys, Session, new_session
from engine.mesh._state import Delivery, Peer
from engine.mesh._store import DeadLetter, MeshWrites, PendingMessage, pending_key
from engine.mesh.protocol import DisconnectCode, ErrorCode, FrameKind, NackCode, NackItem, Role
from engine.messages import Codec, Envelope, Kind, MessageId
from engine.observe.audit import NODE_REGISTERED, NODE_REJECTED
from engine.observe.tracing import Tracer, parse_traceparent

__all__ = ["BrokerCore", "Output"]

log = logging.getLogger("engine.mesh.broker")

_INT32: Final = 2**31
_MAX_CLAIMS: Final = 100_000  # recovery claims and resume notes remembered
_MAX_WARNED: Final = 10_000  # rate-limit stamps of misbehaving connections
_WARN_EVERY: Final = 1.0  # seconds between logs/notices per connection


class Output:
    """What the shell must do after a step: ``writes`` first (one transaction), then send
    ``messages`` (``(peer routing id, frames)`` in order); ``audit`` records to append."""

    __slots__ = ("audit", "messages", "writes")

    def __init__(
        self,
        messages: list[tuple[bytes, list[bytes]]],
        writes: MeshWrites,
        audit: list[tuple[str, dict[str, Any]]],
    ) -> None:
        self.messages = messages
        self.writes = writes
        self.audit = audit


class _Pending:
    """An HMAC registration waiting for its first message signed in the new session."""

    __slots__ = ("expiry", "key", "reg", "role", "session")

    def __init__(
        self, reg: P.Register, role: Role, key: str | None, session: Session, expiry: float
    ) -> None:
        self.reg = reg
        self.role = role
        self.key = key
        self.session = session
        self.expiry = expiry


class BrokerCore:
    """The broker's protocol state machine (see the module docstring)."""

    def __init__(
        self,
        config: BrokerConfig | None = None,
        *,
        broker_id: str = "broker",
        now: float = 0.0,
        wall: float | None = None,
        curve: bool = False,
        keys: Keys | None = None,
        persist: bool = False,
        tracer: Tracer | None = None,
        auditing: bool = False,
    ) -> None:
        self.config = config = config if config is not None else BrokerConfig()
        self.broker_id = broker_id
        self.curve = curve
        self.keys = keys
        self.tracer = tracer
        self.auditing = auditing
        self._persist = persist  # PERF: no key strings per message without a store
        self._now = now
        self._wall_offset = (wall if wall is not None else now) - now
        self._codec = Codec(config.max_frame)
        self.dispatch = Dispatcher(config, clock=self._clock)
        self.peers: dict[bytes, Peer] = {}
        self.names: dict[str, bytes] = {}
        self.origins: dict[str, Peer] = {}
        self.live: dict[MessageId, Delivery] = {}
        self.parked: dict[str, dict[MessageId, tuple[float, Delivery]]] = {}
        self.known: dict[str, float] = {}  # type -> when its last node left (inf: hosted)
        self.recovery: dict[MessageId, tuple[float, Delivery]] = {}
        self.claims: dict[MessageId, tuple[str, float]] = {}
        self.resumes: dict[MessageId, float] = {}
        self.pending_regs: dict[bytes, _Pending] = {}
        self.live_bytes = 0
        self._batch: list[Delivery] = []
        self._out: dict[bytes, Outbox] = {}
        self._reply_session: dict[bytes, bytes] = {}  # HMAC: unregistered idents' sessions
        self._put: dict[str, bytes] = {}
        self._remove: list[str] = []
        self._dead: list[DeadLetter] = []
        self._audit: list[tuple[str, dict[str, Any]]] = []
        self._free_nums: list[int] = []
        self._next_num = 0
        self._warned: dict[bytes, float] = {}
        self._started = now
        self._grace_until = now + config.grace
        self._next_heartbeat = now
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "received",
                "submitted",
                "delivered",
                "redelivered",
                "completed",
                "replies",
                "dead_lettered",
                "malformed",
                "unauthorized",
                "unknown_peer",
                "peers_dead",
                "nacked",
                "unsolicited",
                "busy",
                "expired",
                "cancelled",
                "timeouts",
                "refused_registrations",
                "internal_errors",
            ),
            0,
        )

    def _clock(self) -> float:
        return self._now

    # -- input -------------------------------------------------------------------------

    def receive(
        self, ident: bytes, msg: list[bytes], now: float, user_id: str | None = None
    ) -> None:
        """Take one message from ``ident`` (frames without the routing id). Never raises."""
        self._now = now
        self.stats["received"] += 1
        try:
            self._receive(ident, msg, user_id)
        except ProtocolError as exc:
            self._bad(ident, exc)
        except Exception:  # a bug here must not stop the broker for everyone
            self.stats["internal_errors"] += 1
            log.exception("broker core failed on a message from %s", ident.hex())

    def _receive(self, ident: bytes, msg: list[bytes], user_id: str | None) -> None:
        try:
            kind, bodies, trailer = P.parse(msg)
        except ProtocolError as exc:
            self._bad(ident, exc)
            if "version" in str(exc):
                self._queue(ident, P.disconnect(DisconnectCode.BAD_VERSION, str(exc)))
            return
        peer = self.peers.get(ident)
        if self.keys is not None:
            peer = self._verify(ident, peer, kind, msg, trailer)
            if peer is None and kind is not FrameKind.REGISTER:
                self._on_unknown(ident, kind)
                return
        if kind is FrameKind.REGISTER:
            self._on_register(ident, bodies, user_id)
            return
        if peer is None:
            self._on_unknown(ident, kind)
            return
        peer.last_seen = self._now
        if kind not in peer.allowed:
            self._forbidden(peer, kind, bodies)
        elif kind is FrameKind.DELIVER:
            self._on_deliver(peer, bodies)
        elif kind is FrameKind.REPLY:
            self._on_reply(peer, bodies)
        elif kind is FrameKind.ACK:
            self._on_ack(peer, P.decode_ids(bodies))
        elif kind is FrameKind.NACK:
            self._on_nack(peer, P.decode_nacks(bodies))
        elif kind is FrameKind.CREDIT:
            peer.window = min(P.decode_credit(bodies), self.config.max_node_credit)
            self.dispatch.set_window(peer)
        elif kind is FrameKind.DISCONNECT:
            self._drop(peer, "left")

    def _verify(
        self,
        ident: bytes,
        peer: Peer | None,
        kind: FrameKind,
        msg: list[bytes],
        trailer: bytes | None,
    ) -> Peer | None:
        """HMAC: check the signature and session; activate a pending registration."""
        assert self.keys is not None
        if trailer is None:
            raise ProtocolError("unsigned message while HMAC signatures are required")
        signed = msg[:-1]
        if kind is FrameKind.REGISTER:
            session, _ = self.keys.verify(signed, trailer, TO_BROKER)
            self._reply_session[ident] = session
            return peer
        if peer is not None:
            assert peer.session is not None
            peer.session.open(signed, trailer)
            return peer
        pending = self.pending_regs.get(ident)
        if pending is None:  # e.g. we restarted: answer UNKNOWN_PEER in its session
            session, _ = self.keys.verify(signed, trailer, TO_BROKER)
            self._reply_session[ident] = session
            return None
        pending.session.open(signed, trailer)  # raises unless signed in the session we gave
        del self.pending_regs[ident]
        return self._activate(ident, pending.reg, pending.role, pending.key, pending.session)

    def _forbidden(self, peer: Peer, kind: FrameKind, bodies: list[bytes]) -> None:
        self.stats["unauthorized"] += 1
        reason = f"role {peer.role.value} may not send {kind.name}"
        if self._may_warn(peer.ident):
            log.warning("peer %s: %s: dropped", peer.name, reason)
        if kind is FrameKind.DELIVER:
            for body in bodies:
                try:
                    env = self._codec.decode(body)
                except DecodeError:
                    continue
                self._nack(
                    peer.ident,
                    env.id,
                    NackCode.FORBIDDEN,
                    f"role {peer.role.value} may not submit messages",
                )
        else:
            self._notice(peer.ident, ErrorCode.FORBIDDEN, reason)

    def _on_unknown(self, ident: bytes, kind: FrameKind) -> None:
        self.stats["unknown_peer"] += 1
        if kind is FrameKind.DISCONNECT or not self._may_warn(
            ident, min(self.config.heartbeat, 0.5)
        ):
            return
        self._queue(
            ident, P.disconnect(DisconnectCode.UNKNOWN_PEER, "unknown peer: REGISTER first")
        )

    def unreachable(self, ident: bytes, now: float) -> None:
        """A send to ``ident`` failed for good (its connection is gone, or it does not read)."""
        self._now = now
        try:
            peer = self.peers.get(ident)
            if peer is not None:
                self._drop(peer, "unreachable")
            self.pending_regs.pop(ident, None)
            self._out.pop(ident, None)
        except Exception:
            self.stats["internal_errors"] += 1
            log.exception("broker core failed dropping %s", ident.hex())

    # -- registration -----------------------------------------------------------------

    def _on_register(self, ident: bytes, bodies: list[bytes], user_id: str | None) -> None:
        try:
            reg = P.decode_register(bodies)
        except ProtocolError as exc:
            reason = "bad role" if "role" in str(exc) else "protocol violation"
            self._refuse(ident, None, DisconnectCode.INVALID, reason, str(exc))
            self.stats["malformed"] += 1
            return
        role, key = reg.role, None
        if self.curve:
            # User-Id is "ROLE:FINGERPRINT" (engine.mesh.security._Authenticator)
            role_name, _, key = str(user_id or "").partition(":")
            try:
                key_role = Role(role_name)
            except ValueError:
                self._refuse(
                    ident, reg.name, DisconnectCode.FORBIDDEN, "bad role", "no role for this key"
                )
                return
            if role is not key_role and key_role is not Role.ORCHESTRATOR:
                self.stats["unauthorized"] += 1
                self._refuse(
                    ident,
                    reg.name,
                    DisconnectCode.FORBIDDEN,
                    "bad role",
                    f"this key may only register as {key_role.value}",
                    detail=f"claimed {role.value}, key {key} allows {key_role.value}",
                )
                return
        if role is Role.MONITOR and reg.types:
            self._refuse(
                ident,
                reg.name,
                DisconnectCode.INVALID,
                "bad role",
                "a monitor cannot host agent types",
            )
            return
        if self.keys is not None:
            if ident not in self.peers and len(self.pending_regs) >= self.config.max_peers:
                self._refuse(
                    ident,
                    reg.name,
                    DisconnectCode.RETRY,
                    "full",
                    "too many registrations in progress",
                )
                return
            session = Session(self.keys, new_session(), broker=True)
            self.pending_regs[ident] = _Pending(
                reg, role, key or None, session, self._now + 3 * self.config.heartbeat
            )
            heartbeat = self._heartbeat_of(reg)
            self._welcome(ident, heartbeat, session.session.hex())
            return
        self._activate(ident, reg, role, key or None, None)

    def _heartbeat_of(self, reg: P.Register) -> float:
        hb = reg.heartbeat_ms / 1000.0 if reg.heartbeat_ms else self.config.heartbeat
        return min(hb, self.config.heartbeat_cap)

    def _welcome(self, ident: bytes, heartbeat: float, session: str = "") -> None:
        c = self.config
        welcome = P.Welcome(
            self.broker_id, int(heartbeat * 1000), c.max_frame, c.client_credit, session=session
        )
        self._queue(ident, P.frames(FrameKind.REGISTER, P.encode(welcome)))

    def _activate(
        self, ident: bytes, reg: P.Register, role: Role, key: str | None, session: Session | None
    ) -> Peer | None:
        """Bind the registration to ``ident`` (or refuse it); the peer, or None."""
        peer = self.peers.get(ident)
        takeover = self._holder_of(reg, ident)
        if takeover is False:
            return None
        if peer is None and isinstance(takeover, Peer):
            peer = self._handover(takeover, ident)
        if peer is None and len(self.peers) >= self.config.max_peers:
            self._refuse(
                ident, reg.name, DisconnectCode.RETRY, "full", "the broker is at its peer limit"
            )
            return None
        heartbeat = self._heartbeat_of(reg)
        window = min(reg.credit, self.config.max_node_credit)
        if peer is None:
            num = self._free_nums.pop() if self._free_nums else self._take_num()
            peer = Peer(ident, num, reg, role, key, heartbeat, window, self._now)
            self.peers[ident] = peer
        else:
            self._unbind(peer)
            peer.name, peer.role, peer.key, peer.instance = reg.name, role, key, reg.instance
            peer.allowed = P.ALLOWED[role]
            peer.window, peer.heartbeat, peer.last_seen = window, heartbeat, self._now
            peer.origins = tuple(dict.fromkeys(reg.origins))
            peer.patterns = tuple(dict.fromkeys(reg.subscriptions))
        peer.session = session
        if self.config.client_rate is not None and peer.bucket is None:
            peer.bucket = TokenBucket(self.config.client_rate, self.config.client_burst, self._now)
        try:
            self.dispatch.add_types(peer, reg.types)
            self.dispatch.add_subscriptions(peer, peer.patterns)
        except (RoutingError, ValueError) as exc:
            self._refuse(
                ident,
                reg.name,
                DisconnectCode.INVALID,
                "protocol violation",
                f"bad REGISTER: {exc}",
            )
            self._drop(peer, "bad registration")
            return None
        self.dispatch.set_window(peer)
        self.names[peer.name] = ident
        for origin in peer.origins:
            self.origins[origin] = peer
        for type_ in reg.types:
            self.known[type_] = math.inf
        if session is None:
            self._welcome(ident, heartbeat)
        log.info(
            "peer %s registered (%s; types %s; topics %s)",
            reg.name,
            role.value,
            reg.types,
            reg.subscriptions,
        )
        if self.auditing:
            record = {
                "peer": reg.name,
                "ident": ident.hex(),
                "role": role.value,
                "types": list(reg.types),
                "key": key,
            }
            self._audit.append((NODE_REGISTERED, record))
        self._requeue_unhosted(peer)
        self._recover(peer, reg)
        for type_ in reg.types:
            parked = self.parked.pop(type_, None)
            if parked:
                self._batch.extend(d for _, d in parked.values())
        return peer

    def _take_num(self) -> int:
        self._next_num += 1
        return self._next_num

    def _holder_of(self, reg: P.Register, ident: bytes) -> Peer | bool | None:
        """The live peer this registration takes over (same instance), None if nobody
        holds its name and origins, or False after refusing it (held by another peer)."""
        holders: dict[bytes, Peer] = {}
        other = self.names.get(reg.name)
        if other is not None and other != ident and other in self.peers:
            holders[other] = self.peers[other]
        for origin in reg.origins:
            owner = self.origins.get(origin)
            if owner is not None and owner.ident != ident:
                holders[owner.ident] = owner
        if not holders:
            return None
        same = [
            p
            for p in holders.values()
            if reg.instance and hmac.compare_digest(p.instance, reg.instance)
        ]
        if len(holders) == 1 and same and ident not in self.peers:
            return same[0]
        for p in holders.values():  # a closed connection fails this send: it is dropped
            self._queue(p.ident, P.frames(FrameKind.HEARTBEAT))
        self._refuse(
            ident,
            reg.name,
            DisconnectCode.RETRY,
            "in use",
            f"name {reg.name!r} or an origin is held by a live connection; retry later",
        )
        return False

    def _handover(self, old: Peer, ident: bytes) -> Peer:
        """The same peer process reconnected on ``ident``: it keeps its work and names."""
        del self.peers[old.ident]
        self._out.pop(old.ident, None)
        old.ident = ident
        self.peers[ident] = old
        return old

    def _unbind(self, peer: Peer) -> None:
        """Forget ``peer``'s name, origins, types and subscriptions (it re-registers)."""
        self.dispatch.remove_peer(peer)
        if self.names.get(peer.name) == peer.ident:
            del self.names[peer.name]
        for origin in peer.origins:
            if self.origins.get(origin) is peer:
                del self.origins[origin]

    def _requeue_unhosted(self, peer: Peer) -> None:
        """After a re-registration: work queued here for a type it no longer hosts."""
        for d in list(peer.queued.values()):
            rec = d.env.recipient
            if rec is not None and rec.type not in peer.slots:
                self.dispatch.drop(d)
                self._batch.append(d)

    def _recover(self, peer: Peer, reg: P.Register) -> None:
        """A node names work it holds; a client names work it will resubmit (restart)."""
        hold_until = max(self._grace_until, self._now + 4 * self.config.heartbeat)
        for mid in reg.held:
            held = self.recovery.pop(mid, None)
            if held is not None:
                self._assign_claimed(held[1], peer)
            elif len(self.claims) < _MAX_CLAIMS and mid not in self.live:
                self.claims[mid] = (peer.name, hold_until)
        for mid in reg.resume:
            if (
                mid.origin in peer.origins
                and mid not in self.live
                and len(self.resumes) < _MAX_CLAIMS
            ):
                self.resumes[mid] = hold_until

    def _assign_claimed(self, d: Delivery, peer: Peer) -> None:
        rec = d.env.recipient
        if rec is not None and rec.type in peer.slots:
            self.dispatch.push(d, peer)
        else:
            self._batch.append(d)

    def _refuse(
        self,
        ident: bytes,
        name: str | None,
        code: DisconnectCode,
        reason: str,
        message: str,
        detail: str | None = None,
    ) -> None:
        self.stats["refused_registrations"] += 1
        if self._may_warn(ident):
            log.warning("registration of %s refused: %s", name or ident.hex(), message)
        self._queue(ident, P.disconnect(code, message))
        if self.auditing:
            record = {
                "peer": name[: P.MAX_NAME] if name else None,
                "ident": ident.hex(),
                "reason": reason,
                "detail": (detail or message)[: P.MAX_REASON],
            }
            self._audit.append((NODE_REJECTED, record))

    def _drop(self, peer: Peer, why: str) -> None:
        """Forget ``peer``: its queued work goes elsewhere, its in-flight work is retried."""
        if self.peers.get(peer.ident) is not peer:
            return
        del self.peers[peer.ident]
        log.info(
            "peer %s gone (%s): redelivering %d in flight, %d queued",
            peer.name,
            why,
            len(peer.inflight),
            len(peer.queued),
        )
        self._unbind(peer)
        self._out.pop(peer.ident, None)
        for d in list(peer.queued.values()):  # never reached it: route again, no attempt
            self.dispatch.drop(d)
            if d.env.recipient is None:
                self._copy_done(d, dispatched=False)
            else:
                self._batch.append(d)
        peer.queued.clear()
        inflight = list(peer.inflight.values())
        peer.inflight.clear()
        for d in inflight:
            self.dispatch.drop(d)
            self._retry(d, f"peer {peer.name} {why}")
        for type_ in peer.slots:
            if not self.dispatch.hosts(type_):
                self.known[type_] = self._now
        self._free_nums.append(peer.num)

    # -- submissions -------------------------------------------------------------------

    def _on_deliver(self, peer: Peer, bodies: list[bytes]) -> None:
        decode = self._codec.decode
        stats = self.stats
        live = self.live
        origins = peer.origins
        for body in bodies:
            try:
                env = decode(body)
            except DecodeError as exc:
                self._bad(peer.ident, exc)
                continue
            kind, mid = env.kind, env.id
            if kind is Kind.CANCEL:
                self._cancel(peer, env, body)
                continue
            if kind is not Kind.SEND and kind is not Kind.PUBLISH:
                self._nack(
                    peer.ident, mid, NackCode.INVALID, f"cannot submit a {kind.name} envelope"
                )
                continue
            if mid.origin not in origins:
                stats["unauthorized"] += 1
                self._nack(
                    peer.ident,
                    mid,
                    NackCode.FORBIDDEN,
                    f"id origin {mid.origin[:64]!r} is not registered by this peer",
                )
                continue
            problem = _check_envelope(env)
            if problem:
                self._nack(peer.ident, mid, NackCode.INVALID, problem)
                continue
            stats["submitted"] += 1
            known = live.get(mid)
            if known is not None:  # a resubmission (after a reconnect): never twice
                if known.settled and not known.is_send:
                    self._ack(peer.ident, mid)
                continue
            retry = self._admit(peer, len(body))
            if retry:
                stats["busy"] += 1
                self._nack(peer.ident, mid, NackCode.BUSY, "over the broker's bounds", retry)
                continue
            deadline = math.inf
            if env.deadline:
                deadline = env.deadline - self._wall_offset
                if deadline <= self._now:
                    stats["expired"] += 1
                    self._nack(peer.ident, mid, NackCode.EXPIRED, "deadline passed before delivery")
                    continue
            if self.tracer is not None:
                env, body = self._hop(peer, env)
            d = Delivery(env, body, peer, [1, 1], env.priority, deadline, env.tenant)
            live[mid] = d
            peer.owned += 1
            peer.owned_bytes += d.size
            self.live_bytes += d.size
            if self._persist:
                self._put[pending_key(mid)] = body
            if mid in self.claims or mid in self.resumes:
                self._hold(d)
            else:
                self._batch.append(d)

    def _admit(self, peer: Peer, size: int) -> int:
        """0 if ``peer`` may submit ``size`` more bytes now, else a retry hint in ms."""
        c = self.config
        if (
            peer.owned >= c.client_credit
            or peer.owned_bytes + size > c.max_peer_bytes
            or len(self.live) >= c.max_queued
            or self.live_bytes + size > c.max_queued_bytes
        ):
            return max(1, int(c.heartbeat * 1000))
        bucket = peer.bucket
        if bucket is not None:
            wait = bucket.take(self._now)
            if wait:
                return max(1, math.ceil(wait * 1000))
        return 0

    def _hold(self, d: Delivery) -> None:
        """A resubmission after a broker restart: to the node that holds it, if one does."""
        mid = d.mid
        self.resumes.pop(mid, None)
        claim = self.claims.pop(mid, None)
        if claim is not None:
            ident = self.names.get(claim[0])
            peer = self.peers.get(ident) if ident is not None else None
            if peer is not None:
                self._assign_claimed(d, peer)
                return
        self.recovery[mid] = (max(self._grace_until, self._now + 4 * self.config.heartbeat), d)

    def restore(self, pending: Iterable[PendingMessage]) -> int:
        """Messages a previous run accepted (from the store): held for their nodes to claim
        until the start-up grace ends, then routed. Returns how many."""
        n = 0
        for row in pending:
            try:
                env = self._codec.decode(row.envelope)
            except DecodeError:
                continue
            if env.id in self.live:
                continue
            deadline = env.deadline - self._wall_offset if env.deadline else math.inf
            d = Delivery(env, row.envelope, None, [1, 1], env.priority, deadline, env.tenant)
            self.live[env.id] = d
            self.live_bytes += d.size
            self.recovery[env.id] = (self._grace_until, d)
            n += 1
        return n

    def _hop(self, peer: Peer, env: Envelope) -> tuple[Envelope, bytes]:
        """A ``hop`` span for ``env``; the forwarded copy carries its traceparent."""
        assert self.tracer is not None
        target = env.recipient or env.topic
        try:
            parent = env.traceparent or None
            if parent is not None:
                parse_traceparent(parent)
        except TraceContextError:
            parent = None  # a peer's bad header: start a new trace rather than drop the message
        attrs: dict[str, str | int] = {"engine.source": peer.name, "engine.attempt": env.attempt}
        if target is not None:
            attrs["engine.target"] = str(target)
        with self.tracer.span(f"hop {target}", parent, kind="hop", attributes=attrs) as span:
            env = msgspec.structs.replace(env, traceparent=span.traceparent)
        return env, self._codec.encode(env)

    def _cancel(self, peer: Peer, env: Envelope, body: bytes) -> None:
        """Stop its submitter's request: drop it if queued, forward CANCEL if running."""
        target = env.correlation or env.id
        self._ack(peer.ident, env.id)  # a CANCEL is not tracked: accepted at once
        if target.origin not in peer.origins:
            self.stats["unauthorized"] += 1
            return
        d = self.live.get(target)
        if d is None or d.settled:
            return
        self.stats["cancelled"] += 1
        held = self.recovery.pop(target, None)
        if held is not None:
            self._final(d, NackCode.CANCELLED, "cancelled by its sender")
            return
        rec = d.env.recipient
        if rec is not None:
            parked = self.parked.get(rec.type)
            if parked is not None and parked.pop(target, None) is not None:
                self._final(d, NackCode.CANCELLED, "cancelled by its sender")
                return
        node = d.target
        if node is None:  # in this iteration's batch: it is routed, then cancelled next time
            self._batch = [x for x in self._batch if x is not d]
            self._final(d, NackCode.CANCELLED, "cancelled by its sender")
            return
        if d.task in node.queued:
            self.dispatch.drop(d)
            self._final(d, NackCode.CANCELLED, "cancelled by its sender")
        elif node.inflight.get(target) is d:
            self._out_for(node.ident).deliver.append(body)

    # -- routing and dispatch -----------------------------------------------------------

    def _route_batch(self) -> None:
        while self._batch:
            batch, self._batch = self._batch, []
            assigned, parked, refused, done = self.dispatch.route(batch, self.names, self.peers)
            push = self.dispatch.push
            for d, peer in assigned:
                push(d, peer)
            for d in parked:
                self._park(d)
            for d, why in refused:
                self._final(d, NackCode.UNROUTABLE, why)
            for d in done:  # a publish nobody listens to is done
                d.group[1] = 0
                self._answer_dispatched(d)
                self._finish(d)

    def _park(self, d: Delivery) -> None:
        rec = d.env.recipient
        assert rec is not None
        type_ = rec.type
        since = self.known.get(type_)
        if since is None:
            expiry = self._grace_until
        elif since == math.inf:
            expiry = self._now + self.config.route_timeout  # hosted, but no instance now
        else:
            expiry = since + self.config.route_timeout
        if self._now >= expiry:
            self._final(d, NackCode.UNROUTABLE, f"no node hosts agent type {type_[:256]!r}")
            return
        self.parked.setdefault(type_, {})[d.mid] = (expiry, d)

    def _dispatch_ready(self) -> None:
        ready = self.dispatch.pop_ready(4096)
        if len(ready) == 4096:
            self.dispatch.pending = True
        now = self._now
        for d in ready:
            peer = d.target
            assert peer is not None
            peer.inflight[d.mid] = d
            d.sent_at = now
            self._out_for(peer.ident).deliver.append(d.data)
            if d.env.kind is not Kind.SEND:
                group = d.group
                group[1] -= 1
                if group[1] == 0:
                    self._answer_dispatched(d)
        self.stats["delivered"] += len(ready)
        for d in self.dispatch.expired():
            self.stats["expired"] += 1
            self._final(d, NackCode.EXPIRED, "deadline passed before delivery")

    # -- answers from nodes --------------------------------------------------------------

    def _on_reply(self, peer: Peer, bodies: list[bytes]) -> None:
        decode = self._codec.decode
        inflight = peer.inflight
        for body in bodies:
            try:
                env = decode(body)
            except DecodeError as exc:
                self._bad(peer.ident, exc)
                continue
            corr = env.correlation
            if corr is None or (env.kind is not Kind.REPLY and env.kind is not Kind.ERROR):
                self._bad(
                    peer.ident,
                    ProtocolError("a REPLY body must be a REPLY/ERROR envelope with correlation"),
                )
                continue
            d = inflight.pop(corr, None)
            if d is None:
                self._unsolicited(peer, "REPLY", corr)
                continue
            if not d.settled and d.is_send:
                d.settled = True
                self._release(d)
                owner = self.origins.get(corr.origin)
                if owner is not None:
                    self.stats["replies"] += 1
                    self._out_for(owner.ident).reply.append(body)
            self._completed(d)

    def _on_ack(self, peer: Peer, ids: list[MessageId]) -> None:
        inflight = peer.inflight
        for mid in ids:
            d = inflight.pop(mid, None)
            if d is None:
                self._unsolicited(peer, "ACK", mid)
                continue
            if d.is_send:  # a request must be answered with a REPLY
                self._answer(
                    d, NackCode.INVALID, f"node {peer.name} acknowledged it without a reply"
                )
            self._completed(d)

    def _on_nack(self, peer: Peer, items: list[NackItem]) -> None:
        for item in items:
            d = peer.inflight.pop(item.id, None)
            if d is None:
                self._unsolicited(peer, "NACK", item.id)
                continue
            self.stats["nacked"] += 1
            self.dispatch.drop(d)
            if item.code == NackCode.EXPIRED:
                self.stats["expired"] += 1
                self._final(
                    d, NackCode.EXPIRED, item.reason[: P.MAX_REASON] or "expired at the node"
                )
                continue
            if item.code != NackCode.REJECTED:
                self._bad(
                    peer.ident,
                    ProtocolError(f"a node may NACK only REJECTED or EXPIRED, not {item.code}"),
                )
            rec = d.env.recipient
            if rec is not None:
                self.dispatch.sticky.pop(hash(rec), None)
            self._retry(d, f"rejected by {peer.name}: {item.reason[:256]}")

    def _unsolicited(self, peer: Peer, what: str, mid: MessageId) -> None:
        self.stats["unsolicited"] += 1
        if self._may_warn(peer.ident):
            log.warning(
                "peer %s sent %s for %s, which it was not given: dropped", peer.name, what, mid
            )
            self._notice(
                peer.ident, ErrorCode.UNSOLICITED, f"{what} for a message not delivered to you"
            )

    def _completed(self, d: Delivery) -> None:
        self.stats["completed"] += 1
        self.dispatch.complete(d)
        self._finish(d)

    # -- outcomes -----------------------------------------------------------------------

    def _retry(self, d: Delivery, why: str) -> None:
        d.target = None
        d.attempts += 1
        if d.attempts >= self.config.max_attempts:
            self.stats["dead_lettered"] += 1
            reason = f"dead-lettered after {d.attempts} attempts: {why}"
            self._dead.append(DeadLetter(pending_key(d.mid), d.data, reason, d.attempts))
            self._final(d, NackCode.DEAD_LETTERED, reason)
            return
        if d.env.recipient is None:  # a topic copy belongs to the subscriber that vanished
            self._copy_done(d, dispatched=True)
            return
        self.stats["redelivered"] += 1
        d.env = msgspec.structs.replace(d.env, attempt=d.attempts)
        d.data = self._codec.encode(d.env)
        self._batch.append(d)

    def _copy_done(self, d: Delivery, dispatched: bool) -> None:
        if not dispatched:
            group = d.group
            group[1] -= 1
            if group[1] == 0:
                self._answer_dispatched(d)
        self._finish(d)

    def _answer_dispatched(self, d: Delivery) -> None:
        """A PUBLISH reached its node(s): ACK its submitter (through the first copy)."""
        root = self.live.get(d.mid)
        if root is not None and root.group is d.group:
            d = root
        if d.settled:
            return
        d.settled = True
        self._release(d)
        owner = self.origins.get(d.mid.origin)
        if owner is not None:
            self._ack(owner.ident, d.mid)

    def _answer(self, d: Delivery, code: NackCode, reason: str) -> None:
        """A final NACK to the submitter, if it has not had its answer."""
        if d.settled:
            return
        d.settled = True
        self._release(d)
        owner = self.origins.get(d.mid.origin)
        if owner is not None:
            self._nack(owner.ident, d.mid, code, reason)

    def _final(self, d: Delivery, code: NackCode, reason: str) -> None:
        """End ``d`` without a node's answer (every copy of a publish)."""
        self._answer(d, code, reason)
        d.group[0] = 1
        self._finish(d)

    def _release(self, d: Delivery) -> None:
        owner = d.owner
        if owner is not None:
            owner.owned -= 1
            owner.owned_bytes -= d.size

    def _finish(self, d: Delivery) -> None:
        d.group[0] -= 1
        if d.group[0] > 0:
            return
        mid = d.mid
        root = self.live.get(mid)
        if root is None or root.group is not d.group:
            return
        del self.live[mid]
        self.live_bytes -= root.size
        if not root.settled:  # ended without an answer (a publish copy): still free the window
            root.settled = True
            self._release(root)
        if self._persist:
            key = pending_key(mid)
            if self._put.pop(key, None) is None:
                self._remove.append(key)

    # -- timers -------------------------------------------------------------------------

    def tick(self, now: float, wall: float | None = None) -> None:
        """Heartbeats, dead peers, parked and held messages, delivery timeouts."""
        self._now = now
        if wall is not None:
            self._wall_offset = wall - now
        try:
            self._tick(now)
        except Exception:
            self.stats["internal_errors"] += 1
            log.exception("broker core tick failed")

    def _tick(self, now: float) -> None:
        due = self._next_heartbeat <= now
        if due:
            self._next_heartbeat = now + self.config.heartbeat
            hb = P.frames(FrameKind.HEARTBEAT)
            timeout = self.config.delivery_timeout
            for peer in list(self.peers.values()):
                if now - peer.last_seen > 3 * peer.heartbeat:
                    self.stats["peers_dead"] += 1
                    self._drop(peer, f"silent for {now - peer.last_seen:.2f} s")
                    continue
                self._queue(peer.ident, list(hb))
                inflight = peer.inflight
                while inflight:
                    d = next(iter(inflight.values()))
                    if d.sent_at + timeout > now:
                        break
                    del inflight[d.mid]
                    self.stats["timeouts"] += 1
                    self._cancel_at(peer, d)
                    self.dispatch.drop(d)
                    self._retry(d, f"no answer from {peer.name} within {timeout:g} s")
            for ident, pending in list(self.pending_regs.items()):
                if pending.expiry <= now:
                    del self.pending_regs[ident]
            self._expire_tables(now)
        for type_, parked in list(self.parked.items()):
            for d in _expired(parked, now):
                self._final(d, NackCode.UNROUTABLE, f"no node hosts agent type {type_[:256]!r}")
            if not parked:
                del self.parked[type_]
        if self.recovery and now >= self._grace_until:
            self._batch.extend(_expired(self.recovery, now))

    def _cancel_at(self, peer: Peer, d: Delivery) -> None:
        """Tell ``peer`` to stop ``d`` (it timed out there)."""
        cancel = Envelope(d.mid, Kind.CANCEL, recipient=d.env.recipient, correlation=d.mid)
        self._out_for(peer.ident).deliver.append(self._codec.encode(cancel))

    def _expire_tables(self, now: float) -> None:
        if self.claims:
            for mid, (_, until) in list(self.claims.items()):
                if until <= now:
                    del self.claims[mid]
        if self.resumes:
            for mid, until in list(self.resumes.items()):
                if until <= now:
                    del self.resumes[mid]
        timeout = self.config.route_timeout
        for type_, since in list(self.known.items()):
            if since != math.inf and now - since > timeout and type_ not in self.parked:
                del self.known[type_]
        if self.dispatch.maybe_rebuild(self.peers.values()):
            log.info("router rebuilt: %d live types", len(self.known))
        if len(self._warned) > _MAX_WARNED:
            self._warned.clear()

    # -- output -------------------------------------------------------------------------

    def output(self) -> Output:
        """Route and dispatch what arrived; the frames to send and the writes to make."""
        try:
            if self._batch:
                self._route_batch()
            if self.dispatch.pending:
                self._dispatch_ready()
        except Exception:
            self.stats["internal_errors"] += 1
            log.exception("broker core failed routing a batch")
        messages: list[tuple[bytes, list[bytes]]] = []
        if self._out:
            outs, self._out = self._out, {}
            keys, peers = self.keys, self.peers
            for ident, out in outs.items():
                msgs = out.messages()
                if keys is not None:
                    msgs = self._sign(ident, peers.get(ident), msgs)
                messages.extend((ident, m) for m in msgs)
            self._reply_session.clear()
        writes = MeshWrites()
        if self._put or self._remove or self._dead:
            writes.put = [PendingMessage(k, v) for k, v in self._put.items()]
            writes.remove, writes.dead = self._remove, self._dead
            self._put, self._remove, self._dead = {}, [], []
        audit, self._audit = self._audit, []
        return Output(messages, writes, audit)

    def _sign(self, ident: bytes, peer: Peer | None, msgs: list[list[bytes]]) -> list[list[bytes]]:
        assert self.keys is not None
        if peer is not None and peer.session is not None:
            return [peer.session.seal(m) for m in msgs]
        # A Welcome, or a notice to a connection without a session yet: signed in the
        # session of the message it answers, with counter 0 (a peer accepts counter 0 only
        # for these).
        session = self._reply_session.get(ident)
        if session is None:
            return []
        return [self.keys.sign(m, TO_PEER, session, 0) for m in msgs]

    def shutdown(self) -> Output:
        """DISCONNECT SHUTDOWN to every peer (the broker stops)."""
        for ident in self.peers:
            self._queue(ident, P.disconnect(DisconnectCode.SHUTDOWN, "broker stopping"))
        return self.output()

    # -- helpers ------------------------------------------------------------------------

    def _out_for(self, ident: bytes) -> Outbox:
        out = self._out.get(ident)
        if out is None:
            out = self._out[ident] = Outbox()
        return out

    def _queue(self, ident: bytes, frames: list[bytes]) -> None:
        self._out_for(ident).other.append(frames)

    def _ack(self, ident: bytes, mid: MessageId) -> None:
        self._out_for(ident).acks.append(mid)

    def _nack(
        self, ident: bytes, mid: MessageId, code: NackCode, reason: str, retry_ms: int = 0
    ) -> None:
        self._out_for(ident).nacks.append(
            NackItem(mid, int(code), reason[: P.MAX_REASON], retry_ms)
        )

    def _notice(self, ident: bytes, code: ErrorCode, reason: str) -> None:
        self._queue(ident, P.notice(code, reason))

    def _may_warn(self, ident: bytes, every: float = _WARN_EVERY) -> bool:
        """Rate limit (per connection) of logs and notices about its misbehaviour."""
        last = self._warned.get(ident)
        if last is not None and self._now - last < every:
            return False
        self._warned[ident] = self._now
        return True

    def _bad(self, ident: bytes, exc: Exception) -> None:
        """A message that breaks the protocol: counted, logged and answered (rate-limited)."""
        self.stats["malformed"] += 1
        if self._may_warn(ident):
            log.warning("dropped malformed frame from %s: %s", ident.hex(), exc)
            self._notice(ident, ErrorCode.MALFORMED, str(exc))

    # -- introspection ------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Messages held that no node has received yet (queued, parked, held, unrouted)."""
        inflight = sum(len(p.inflight) for p in self.peers.values())
        return max(0, len(self.live) - inflight)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Registered peers: role, types, window, in flight, queued."""
        return {
            p.name: {
                "role": p.role.value,
                "types": sorted(p.slots),
                "window": p.window,
                "inflight": len(p.inflight),
                "queued": len(p.queued),
            }
            for p in list(self.peers.values())
        }


def _expired(table: dict[MessageId, tuple[float, Delivery]], now: float) -> list[Delivery]:
    """Remove and return the entries of ``table`` (in expiry order) whose time came."""
    due = []
    for mid, (until, d) in table.items():
        if until > now:
            break
        due.append((mid, d))
    for mid, _ in due:
        del table[mid]
    return [d for _, d in due]


def _check_envelope(env: Envelope) -> str:
    """What is wrong with a submitted envelope's routing fields ('' if nothing)."""
    rec = env.recipient
    if rec is not None:
        if not 0 < len(rec.type) <= P.MAX_TYPE or len(rec.key) > P.MAX_KEY:
            return f"recipient type must be 1..{P.MAX_TYPE} and key 0..{P.MAX_KEY} characters"
    elif env.topic is None:
        return "envelope has neither recipient nor topic"
    if env.tenant and len(env.tenant) > P.MAX_TENANT:
        return f"tenant is longer than {P.MAX_TENANT} characters"
    if not -_INT32 <= env.priority < _INT32:
        return "priority is outside the int32 range"
    return ""
