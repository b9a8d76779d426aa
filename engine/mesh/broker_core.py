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

import logging
import math
from typing import Any, Final

from engine.errors import DecodeError, ProtocolError
from engine.mesh import protocol as P
from engine.mesh._core_base import MAX_WARNED, CoreBase, Output
from engine.mesh._flow import Flow, _expired
from engine.mesh._registration import Registration
from engine.mesh._signing import TO_BROKER, TO_PEER
from engine.mesh._state import Delivery, Peer
from engine.mesh._store import MeshWrites, PendingMessage
from engine.mesh.protocol import DisconnectCode, ErrorCode, FrameKind, NackCode
from engine.messages import Envelope, Kind

__all__ = ["BrokerCore", "Output"]

log = logging.getLogger("engine.mesh.broker")


_WELCOME: Final = P.header(FrameKind.REGISTER)
_NO_WRITES: Final = MeshWrites()  # shared, never mutated: empty lists, false
_NO_AUDIT: Final[list[tuple[str, dict[str, Any]]]] = []


class BrokerCore(Registration, Flow, CoreBase):
    """The broker's protocol state machine (see the module docstring)."""

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
        pending = self.pending_regs.get(ident)
        if pending is not None:
            try:
                pending.session.open(signed, trailer)  # the session we gave its REGISTER
            except ProtocolError:
                if peer is None:
                    raise
            else:
                del self.pending_regs[ident]
                reg, role, key = pending.reg, pending.role, pending.key
                return self._activate(ident, reg, role, key, pending.session)
        if peer is not None:  # (re-registering: still in its current session until then)
            assert peer.session is not None
            peer.session.open(signed, trailer)
            return peer
        # e.g. we restarted: answer UNKNOWN_PEER in its session
        session, _ = self.keys.verify(signed, trailer, TO_BROKER)
        self._reply_session[ident] = session
        return None

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
        for type_, parked in list(self.parked.items()):
            for d in _expired(parked, now):
                self._final(d, NackCode.UNROUTABLE, f"no node hosts agent type {type_[:256]!r}")
            if not parked:
                del self.parked[type_]
        if self.recovery and now >= self._grace_until:
            self._batch.extend(_expired(self.recovery, now))
        if self._next_heartbeat > now:
            return
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
                self.dispatch.drop(d, delivered=True)
                self._retry(d, f"no answer from {peer.name} within {timeout:g} s", avoid=peer)
        for ident, pending in list(self.pending_regs.items()):
            if pending.expiry <= now:
                del self.pending_regs[ident]
        self._expire_tables(now)

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
        if len(self._warned) > MAX_WARNED:
            self._warned.clear()

    # -- output -------------------------------------------------------------------------

    def output(self) -> Output:
        """Route and dispatch what arrived; the frames to send and the writes to make."""
        if self._batch or self.dispatch.pending:
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
            if self.keys is None:
                for ident, out in outs.items():
                    for m in out.messages():
                        messages.append((ident, m))
            else:
                peers = self.peers
                for ident, out in outs.items():
                    for m in self._sign(ident, peers.get(ident), out.messages()):
                        messages.append((ident, m))
                self._reply_session.clear()
        writes = _NO_WRITES  # PERF: nothing allocated per step without a store
        if self._put or self._remove or self._dead:
            writes = MeshWrites(
                [PendingMessage(k, v) for k, v in self._put.items()], self._remove, self._dead
            )
            self._put, self._remove, self._dead = {}, [], []
        audit = _NO_AUDIT
        if self._audit:
            audit, self._audit = self._audit, []
        return Output(messages, writes, audit)

    def _sign(self, ident: bytes, peer: Peer | None, msgs: list[list[bytes]]) -> list[list[bytes]]:
        assert self.keys is not None
        # A Welcome (also to a peer registering again), or a notice to a connection without
        # a session yet: signed in the session of the message it answers, with counter 0.
        hello = self._reply_session.get(ident)
        current = peer.session if peer is not None else None
        out = []
        for m in msgs:
            if hello is not None and (current is None or m[0] == _WELCOME):
                out.append(self.keys.sign(m, TO_PEER, hello, 0))
            elif current is not None:
                out.append(current.seal(m))
        return out

    def shutdown(self) -> Output:
        """DISCONNECT SHUTDOWN to every peer (the broker stops)."""
        for ident in self.peers:
            self._queue(ident, P.disconnect(DisconnectCode.SHUTDOWN, "broker stopping"))
        return self.output()

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
                "queued": p.waiting,
            }
            for p in list(self.peers.values())
        }
