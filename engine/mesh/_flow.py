"""The broker core's message flow: admission, routing, dispatch and exactly one answer.

A submission is checked (kind, id owner, field limits), admitted within the bounds
(window, bytes, rate), routed in batches, queued as a scheduler task for its node, and
delivered within the node's credit. The node's REPLY, ACK or NACK — accepted only from
the node that holds the delivery — settles it; a node that dies, rejects or times out
gets it retried, up to the dead-letter queue. The submitter gets exactly one answer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Final

import msgspec

from engine.errors import DecodeError, ProtocolError, TraceContextError
from engine.mesh import protocol as P
from engine.mesh._core_base import CoreBase
from engine.mesh._state import Delivery, Peer
from engine.mesh._store import DeadLetter, PendingMessage, pending_key
from engine.mesh.protocol import ErrorCode, NackCode, NackItem
from engine.messages import Envelope, Kind, MessageId
from engine.observe.tracing import parse_traceparent

__all__ = ["Flow"]

log = logging.getLogger("engine.mesh.broker")

_INT32: Final = 2**31
_INF: Final = math.inf


class Flow(CoreBase):
    """Submissions, routing, dispatch, answers and outcomes."""

    def _on_deliver(self, peer: Peer, bodies: list[bytes]) -> None:
        decode = self._codec.decode
        stats = self.stats
        live = self.live
        origins = peer.origins
        c = self.config
        recovering = self.claims or self.resumes
        for body in bodies:
            try:
                env = decode(body)
            except DecodeError as exc:
                self._bad(peer.ident, exc)
                continue
            kind, mid = env.kind, env.id
            if kind is not Kind.SEND and kind is not Kind.PUBLISH:
                if kind is Kind.CANCEL:
                    self._cancel(peer, env, body)
                else:
                    self._nack(peer.ident, mid, NackCode.INVALID, f"cannot submit {kind.name}")
                continue
            if mid.origin not in origins:
                stats["unauthorized"] += 1
                why = f"id origin {mid.origin[:64]!r} is not registered by this peer"
                self._nack(peer.ident, mid, NackCode.FORBIDDEN, why)
                continue
            rec = env.recipient
            if (
                rec is None
                or not 0 < len(rec.type) <= P.MAX_TYPE
                or len(rec.key) > P.MAX_KEY
                or env.tenant
                or env.priority
            ):  # PERF: the common envelope passes the checks above alone
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
            size = len(body)
            if (
                peer.owned >= c.client_credit
                or peer.owned_bytes + size > c.max_peer_bytes
                or len(live) >= c.max_queued
                or self.live_bytes + size > c.max_queued_bytes
                or peer.bucket is not None
            ):
                retry = self._admit(peer, size)
                if retry:
                    stats["busy"] += 1
                    self._nack(peer.ident, mid, NackCode.BUSY, "over the broker's bounds", retry)
                    continue
            deadline = _INF
            if env.deadline:
                deadline = env.deadline - self._wall_offset
                if deadline <= self._now:
                    stats["expired"] += 1
                    self._nack(peer.ident, mid, NackCode.EXPIRED, "deadline passed before delivery")
                    continue
            if self.tracer is not None:
                env, body = self._hop(peer, env)
            d = Delivery(env, body, peer, deadline)
            live[mid] = d
            peer.owned += 1
            peer.owned_bytes += size
            self.live_bytes += size
            if self._persist:
                self._put[pending_key(mid)] = body
            if recovering and (mid in self.claims or mid in self.resumes):
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
        claim = self.claims.get(mid)
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
            d = Delivery(env, row.envelope, None, deadline)
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
        if d is None or d.settled or d.group is not None:
            return  # a publish handed out to its subscribers' copies is past cancelling
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
        if self.dispatch.is_queued(d):
            self.dispatch.drop(d, delivered=False)
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
        last: Peer | None = None
        deliver: list[bytes] = []
        for d in ready:
            peer = d.target
            assert peer is not None
            peer.inflight[d.mid] = d
            d.sent_at = now
            if peer is not last:
                last, deliver = peer, self._out_for(peer.ident).deliver
            deliver.append(d.data)
            if d.env.kind is not Kind.SEND:  # a PUBLISH is answered once it reached its node(s)
                group = d.group
                if group is None:
                    self._answer_dispatched(d)
                else:
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
        complete = self.dispatch.complete
        stats = self.stats
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
            if not d.settled and d.env.kind is Kind.SEND:
                d.settled = True
                owner = d.owner
                if owner is not None:
                    owner.owned -= 1
                    owner.owned_bytes -= d.size
                dest = self._submitter(d)
                if dest is not None:
                    stats["replies"] += 1
                    self._out_for(dest.ident).reply.append(body)
            stats["completed"] += 1
            complete(d)
            self._finish(d)

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
            self.dispatch.drop(d, delivered=True)
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
            self._retry(d, f"rejected by {peer.name}: {item.reason[:256]}", avoid=peer)

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

    def _retry(self, d: Delivery, why: str, avoid: Peer | None = None) -> None:
        d.target = None
        rec = d.env.recipient
        if avoid is not None and rec is not None:  # not back to the peer that failed it
            d.avoid = avoid
            self.dispatch.sticky.pop(hash(rec), None)
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
        group = d.group
        if not dispatched and group is not None:
            group[1] -= 1
            if group[1] == 0:
                self._answer_dispatched(d)
        self._finish(d)

    def _answer_dispatched(self, d: Delivery) -> None:
        """A PUBLISH reached its node(s): ACK its submitter (through the first copy)."""
        if d.group is not None:
            root = self.live.get(d.mid)
            if root is not None and root.group is d.group:
                d = root
        if d.settled:
            return
        d.settled = True
        self._release(d)
        owner = self._submitter(d)
        if owner is not None:
            self._ack(owner.ident, d.mid)

    def _answer(self, d: Delivery, code: NackCode, reason: str) -> None:
        """A final NACK to the submitter, if it has not had its answer."""
        if d.settled:
            return
        d.settled = True
        self._release(d)
        owner = self._submitter(d)
        if owner is not None:
            self._nack(owner.ident, d.mid, code, reason)

    def _submitter(self, d: Delivery) -> Peer | None:
        """The peer to answer ``d``: the one that submitted it (or the same process
        reconnected), never a newcomer that registered its origin after it left. A message
        recovered from the store has no submitter: its origin's holder gets the answer."""
        dest = self.origins.get(d.mid.origin)
        if dest is None or (d.owner is not None and dest is not d.owner):
            return None
        return dest

    def _final(self, d: Delivery, code: NackCode, reason: str) -> None:
        """End ``d`` (this copy) without a node's answer; its submitter gets ``code``."""
        self._answer(d, code, reason)
        self._finish(d)

    def _release(self, d: Delivery) -> None:
        owner = d.owner
        if owner is not None:
            owner.owned -= 1
            owner.owned_bytes -= d.size

    def _finish(self, d: Delivery) -> None:
        """``d`` (one copy) is over; the message is once every copy is."""
        mid = d.mid
        group = d.group
        if group is None:
            if self.live.get(mid) is not d:
                return
            root = d
        else:
            group[0] -= 1
            if group[0] > 0:
                return
            found = self.live.get(mid)
            if found is None or found.group is not group:
                return
            root = found
        del self.live[mid]
        self.live_bytes -= root.size
        if not root.settled:  # ended without an answer (a publish copy): still free the window
            root.settled = True
            self._release(root)
        if self._persist:
            key = pending_key(mid)
            if self._put.pop(key, None) is None:
                self._remove.append(key)


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
