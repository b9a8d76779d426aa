"""The broker core's registrations: who a peer is, what it may do, what it hosts.

A REGISTER binds a name, origins, agent types and topic patterns to the connection that
sent it. Under CURVE the role is the key's; a name or origin held by another live
connection is refused (DISCONNECT RETRY) unless the REGISTER comes from the same peer
process (its ``instance`` token), which then takes over its own work. Under HMAC a
registration becomes active only with the first message signed in the session the
broker handed out (``engine.mesh._signing``). A peer that leaves or dies is forgotten;
its queued work is routed again and its in-flight work retried.
"""

from __future__ import annotations

import hmac
import logging
import math

from engine.errors import ProtocolError, RoutingError
from engine.mesh import protocol as P
from engine.mesh._config import TokenBucket
from engine.mesh._core_base import MAX_CLAIMS, CoreBase, _Pending
from engine.mesh._signing import Session, new_session
from engine.mesh._state import Delivery, Peer
from engine.mesh.protocol import DisconnectCode, FrameKind, Role
from engine.observe.audit import NODE_REGISTERED, NODE_REJECTED

__all__ = ["Registration"]

log = logging.getLogger("engine.mesh.broker")


class Registration(CoreBase):
    """REGISTER, takeover, refusal and departure of peers."""

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
            "peer %s registered (%s; types %s; topics %s; holds %d, resends %d)",
            reg.name,
            role.value,
            reg.types,
            reg.subscriptions,
            len(reg.held),
            len(reg.resume),
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
        """Forget ``peer``'s name, origins, types and subscriptions (it leaves or re-registers)."""
        types = list(peer.slots)
        self.dispatch.remove_peer(peer)
        for type_ in types:
            if not self.dispatch.hosts(type_):
                self.known[type_] = self._now  # unhosted since now (route_timeout counts)
        if self.names.get(peer.name) == peer.ident:
            del self.names[peer.name]
        for origin in peer.origins:
            if self.origins.get(origin) is peer:
                del self.origins[origin]

    def _requeue_unhosted(self, peer: Peer) -> None:
        """After a re-registration: work queued here for a type it no longer hosts goes
        elsewhere; a topic copy for a topic it no longer subscribes to is dropped."""
        for d in self.dispatch.queued_for(peer):
            rec = d.env.recipient
            if rec is not None:
                if rec.type not in peer.slots:
                    self.dispatch.drop(d, delivered=False)
                    self._batch.append(d)
                continue
            topic = d.env.topic
            try:
                subscribed = topic is not None and peer.num in self.dispatch.router.match(
                    topic.type
                )
            except RoutingError:
                subscribed = False
            if not subscribed:
                self.dispatch.drop(d, delivered=False)
                self._copy_done(d, dispatched=False)

    def _recover(self, peer: Peer, reg: P.Register) -> None:
        """A node names work it holds; a client names work it will resubmit (restart)."""
        hold_until = max(self._grace_until, self._now + 4 * self.config.heartbeat)
        for mid in reg.held:
            held = self.recovery.pop(mid, None)
            if held is not None:
                self._assign_claimed(held[1], peer)
            # remembered even when assigned: a resubmission of it (the client resends what
            # it has no answer for yet) goes to the same node, which answers from its cache
            if len(self.claims) < MAX_CLAIMS:
                self.claims[mid] = (peer.name, hold_until)
        for mid in reg.resume:
            if (
                mid.origin in peer.origins
                and mid not in self.live
                and len(self.resumes) < MAX_CLAIMS
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
            peer.waiting,
        )
        self._unbind(peer)
        self._out.pop(peer.ident, None)
        for d in self.dispatch.queued_for(peer):  # never reached it: route again, no attempt
            self.dispatch.drop(d, delivered=False)
            if d.env.recipient is None:
                self._copy_done(d, dispatched=False)
            else:
                self._batch.append(d)
        inflight = list(peer.inflight.values())
        peer.inflight.clear()
        for d in inflight:
            self.dispatch.drop(d, delivered=True)
            self._retry(d, f"peer {peer.name} {why}")
        self._free_nums.append(peer.num)
