"""The mesh broker: a ZeroMQ ROUTER that routes envelopes between peers.

One thread runs a batched loop: poll once, drain up to ``batch`` messages with NOBLOCK,
route them, then flush one multipart message per (peer, kind) — so under load many
envelopes share one ZeroMQ send. Routing uses ``engine.routing.Router``: each node that
hosts type ``T`` is the router instance ``AgentId(T, node_name)``; direct messages stick
to the node that first served their ``AgentId``; key ``"*"`` asks for any instance; topics
fan out to every subscribed peer.

Reliability: deliveries stay in the target peer's in-flight table until it ACKs, REPLYs
or NACKs them; a peer silent for 3 heartbeat intervals is dead and its in-flight and
queued work is redelivered elsewhere with ``attempt + 1``; after ``max_attempts`` a
message goes to the dead-letter queue. A peer never has more than its ``credit`` window
in flight, and the broker ACKs a submission only once it left the broker, so a client's
window bounds the broker's queues.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import msgspec
import zmq

from engine.errors import AuditError, DecodeError, ProtocolError, RoutingError, TraceContextError
from engine.mesh import protocol as P
from engine.mesh._io import FrameIO, frame_socket
from engine.mesh._outbox import Outbox
from engine.mesh._routing import make_router
from engine.mesh._store import MemoryStore, open_store
from engine.mesh.protocol import FrameKind, NackCode, NackItem, Role
from engine.mesh.security import CurveServer
from engine.messages import AgentId, Codec, Envelope, Kind, MessageId
from engine.observe.audit import NODE_REGISTERED, NODE_REJECTED, AuditLog
from engine.observe.tracing import Tracer, parse_traceparent

if TYPE_CHECKING:
    from engine.observe.server import ObserveServer

__all__ = ["Broker"]

log = logging.getLogger("engine.mesh.broker")

ANY_KEY: Final = "*"
_ENVELOPE_KINDS: Final = frozenset({Kind.SEND, Kind.PUBLISH, Kind.CANCEL})


class _Delivery:
    """One message on its way to one peer."""

    __slots__ = ("attempts", "data", "env", "group", "key", "slot", "source", "target")

    def __init__(self, env: Envelope, data: bytes, source: bytes, group: list[int]) -> None:
        self.env = env
        self.data = data
        self.source = source  # routing id of the submitter (b"" when loaded from the store)
        self.attempts = env.attempt
        self.slot = -1  # router slot charged by pick(), -1 when none
        self.target: _Peer | None = None
        self.key = env.id
        self.group = group  # [copies not yet finished]; shared by a publish's copies


class _Peer:
    __slots__ = (
        "allowed",
        "heartbeat",
        "ident",
        "inflight",
        "last_seen",
        "name",
        "num",
        "origins",
        "queue",
        "role",
        "sids",
        "slots",
        "window",
    )

    def __init__(self, ident: bytes, num: int, reg: P.Register, role: Role, now: float) -> None:
        self.ident = ident
        self.num = num
        self.name = reg.name
        self.role = role
        self.allowed = P.ALLOWED[role]  # frame kinds this peer may send
        self.window = max(0, reg.credit)
        self.heartbeat = reg.heartbeat_ms / 1000.0
        self.origins = list(reg.origins)
        self.inflight: dict[MessageId, _Delivery] = {}
        self.queue: deque[_Delivery] = deque()
        self.slots: dict[str, int] = {}
        self.sids: list[int] = []
        self.last_seen = now


class Broker:
    """The ROUTER broker. ``run()`` blocks; ``start()`` runs it in a daemon thread.

    Parameters mirror ``engine broker``: ``bind`` endpoint(s), optional ``curve_dir``,
    ``store`` URL (``sqlite:///path``), ``metrics_port``. ``heartbeat`` is in seconds;
    a peer silent for ``3 * heartbeat`` is dead.

    ``metrics_port`` serves ``/metrics`` (``engine_*`` and ``engine_mesh_*``),
    ``/debug/profile`` and ``/healthz`` on ``metrics_host`` (127.0.0.1 unless told: the
    profile shows code paths) while the broker runs.

    ``audit`` (an :class:`~engine.observe.audit.AuditLog` or a path) receives a
    ``node.registered`` or ``node.rejected`` record per REGISTER; other frames cost nothing.
    """

    def __init__(
        self,
        bind: str | Iterable[str] = "tcp://127.0.0.1:5555",
        *,
        curve_dir: str | None = None,
        store: str | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        heartbeat: float = 0.5,
        max_attempts: int = 5,
        client_credit: int = 1024,
        max_frame: int = P.MAX_FRAME,
        max_queued: int = 1_000_000,
        route_timeout: float = 10.0,
        startup_grace: float | None = None,
        hmac_key: bytes | None = None,
        policy: str = "least_outstanding",
        batch: int = 2048,
        max_sticky: int = 1_000_000,
        tracer: Tracer | None = None,
        audit: AuditLog | str | os.PathLike[str] | None = None,
    ) -> None:
        self.binds = [bind] if isinstance(bind, str) else list(bind)
        self.heartbeat = heartbeat
        self.max_attempts = max_attempts
        self.client_credit = client_credit
        self.max_frame = max_frame
        self.max_queued = max_queued
        self.route_timeout = route_timeout
        # After a (re)start, unknown types wait this long for their nodes to re-register.
        self.startup_grace = startup_grace if startup_grace is not None else max(2.0, 4 * heartbeat)
        self.hmac_key = hmac_key
        self.policy = policy
        self.batch = batch
        self.max_sticky = max_sticky
        self.tracer = tracer  # a "hop" span per forwarded envelope when set
        self.broker_id = os.urandom(8).hex()
        self.curve = CurveServer.from_dir(curve_dir) if curve_dir else None
        # node.registered / node.rejected records; only registrations pay for it.
        self._own_audit = audit is not None and not isinstance(audit, AuditLog)
        self.audit: AuditLog | None = (
            audit if isinstance(audit, AuditLog) or audit is None else AuditLog(audit)
        )
        self.store: MemoryStore = open_store(store)
        self._persist = store is not None  # PERF: no key strings per message without a store
        if metrics_port is not None and (
            not isinstance(metrics_port, int)
            or isinstance(metrics_port, bool)
            or not 0 <= metrics_port <= 65535
        ):
            raise ValueError(f"metrics_port must be an int in [0, 65535], got {metrics_port!r}")
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.observe: ObserveServer | None = None  # the metrics endpoint while running
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
            ),
            0,
        )
        self.endpoints: list[str] = []
        self._codec = Codec(max_frame)
        self._router = make_router()
        self._typed_policy: set[str] = set()
        self._peers: dict[bytes, _Peer] = {}
        self._names: dict[str, bytes] = {}
        self._origins: dict[str, bytes] = {}
        self._slot_peer: dict[int, bytes] = {}
        self._sub_peer: dict[int, bytes] = {}
        self._sticky: dict[AgentId, bytes] = {}
        self._parked: dict[str, deque[tuple[float, _Delivery]]] = {}
        self._known_types: set[str] = set()
        self._out: dict[bytes, Outbox] = {}
        self._dirty: set[bytes] = set()
        self._queued = 0
        self._next_num = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: dict[bytes, float] = {}
        self._started = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in a daemon thread; returns once the sockets are bound."""
        self._thread = threading.Thread(target=self._run_thread, name="engine-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("broker did not start within 10 s")
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    _error: BaseException | None = None

    def _run_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            if exc is not self._error:  # a startup error is raised by start() instead
                raise

    def run(self) -> None:
        """Bind and serve until :meth:`stop` (or SIGTERM/SIGINT in ``engine broker``)."""
        ctx: zmq.Context[Any] = zmq.Context()
        auth = None
        sock = ctx.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame)
            sock.setsockopt(zmq.SNDHWM, 200_000)
            sock.setsockopt(zmq.RCVHWM, 200_000)
            if self.curve is not None:
                auth = self.curve.apply(ctx, sock)
            for endpoint in self.binds:
                sock.bind(endpoint)
                self.endpoints.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
            self._start_metrics()
            self._restore()
        except BaseException as exc:
            self._stop_metrics()
            self._error = exc
            self._ready.set()
            sock.close(0)
            if auth is not None:
                auth.stop()
            ctx.term()
            raise
        self._ready.set()
        log.info("broker %s listening on %s", self.broker_id, ", ".join(self.endpoints))
        io = frame_socket(sock)
        try:
            self._loop(io)
        finally:
            for ident in list(self._peers):
                self._send(
                    io,
                    ident,
                    P.frames(
                        FrameKind.DISCONNECT,
                        P.encode(P.Disconnect(P.DisconnectCode.SHUTDOWN, "broker stopping")),
                    ),
                )
            self.store.close()
            if self._own_audit and self.audit is not None:
                self.audit.close()
            sock.close(0)
            if auth is not None:
                auth.stop()
            ctx.term()
            self._stop_metrics()

    # -- the loop --------------------------------------------------------------------

    def _loop(self, io: FrameIO) -> None:
        curve = self.curve is not None
        tick = min(self.heartbeat, 0.05)
        next_tick = time.monotonic() + tick
        batch = self.batch
        while not self._stop.is_set():
            timeout = max(0.0, next_tick - time.monotonic())
            # PERF: one compiled call takes every waiting message (benches/mesh_seq_profile.py)
            if io.wait(int(timeout * 1000) + 1):
                if curve:
                    for msg, user_id in io.recv_many_meta(batch, "User-Id"):
                        self._on_curve_message(msg, user_id)
                else:
                    for msg in io.recv_many(batch):
                        self._on_message(msg)
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + tick
            if self._dirty:
                self._dispatch()
            if self._out:
                self._flush(io)
            self.store.commit()

    def _on_curve_message(self, msg: list[bytes], user_id: str | None) -> None:
        if len(msg) > 1 and len(msg[1]) == P.HEADER_SIZE and msg[1][4] == FrameKind.REGISTER:
            try:
                # User-Id is "ROLE:FINGERPRINT" (engine.mesh.security._Authenticator)
                role_name, _, key = str(user_id).partition(":")
                role = Role(role_name)
            except ValueError:
                role, key = Role.WORKER, ""
            self._on_message(msg, role, key or None)
        else:
            self._on_message(msg)

    def _audit_event(self, event: str, data: dict[str, Any]) -> None:
        if self.audit is None:
            return
        try:
            self.audit.append(event, data)
        except (AuditError, OSError) as exc:  # never let the audit file stop the broker
            log.error("audit record %s not written: %s", event, exc)

    def _reject(self, ident: bytes, name: str | None, reason: str, detail: str) -> None:
        """A refused REGISTER: counted by the caller, recorded here."""
        if self.audit is not None:
            self._audit_event(
                NODE_REJECTED,
                {"peer": name, "ident": ident.hex(), "reason": reason, "detail": detail},
            )

    def _on_message(
        self, msg: list[bytes], key_role: Role | None = None, key: str | None = None
    ) -> None:
        stats = self.stats
        stats["received"] += 1
        ident = msg[0]
        try:
            kind, bodies = P.parse(msg[1:], self.hmac_key)
        except ProtocolError as exc:
            self._bad_message(ident, msg, exc)
            return
        peer = self._peers.get(ident)
        if kind is FrameKind.REGISTER:
            self._on_register(ident, bodies, key_role, key)
            return
        if peer is None:
            self._on_unknown(ident, kind, bodies)
            return
        peer.last_seen = time.monotonic()
        if kind not in peer.allowed:
            stats["unauthorized"] += 1
            log.warning(
                "peer %s (%s) may not send %s: dropped", peer.name, peer.role.value, kind.name
            )
            if kind is FrameKind.DELIVER:
                for body in bodies:
                    self._nack_body(
                        ident,
                        body,
                        NackCode.FORBIDDEN,
                        f"role {peer.role.value} may not submit messages",
                    )
            return
        try:
            if kind is FrameKind.DELIVER:
                self._on_deliver(peer, bodies)
            elif kind is FrameKind.REPLY:
                self._on_reply(peer, bodies)
            elif kind is FrameKind.ACK:
                self._on_ack(peer, P.decode_ids(bodies))
            elif kind is FrameKind.NACK:
                self._on_nack(peer, P.decode_nacks(bodies))
            elif kind is FrameKind.CREDIT:
                peer.window = P.decode_credit(bodies)
                self._dirty.add(ident)
            elif kind is FrameKind.DISCONNECT:
                self._drop_peer(peer, "left")
        except ProtocolError as exc:
            self._bad(ident, exc)

    def _bad_message(self, ident: bytes, msg: list[bytes], exc: ProtocolError) -> None:
        """A message whose frames do not parse: counted, logged, maybe answered."""
        self._bad(ident, exc)
        if self.audit is not None and msg[1][4:5] == bytes([FrameKind.REGISTER]):
            self._reject(ident, None, "protocol violation", str(exc))
        if "version" in str(exc):
            self._queue_other(
                ident,
                FrameKind.DISCONNECT,
                P.encode(P.Disconnect(P.DisconnectCode.BAD_VERSION, str(exc))),
            )

    def _bad(self, ident: bytes, exc: Exception) -> None:
        self.stats["malformed"] += 1
        now = time.monotonic()
        if now - self._warned.get(ident, 0.0) > 1.0:
            if len(self._warned) > 10_000:
                self._warned.clear()
            self._warned[ident] = now
            log.warning("dropped malformed frame from %s: %s", ident.hex(), exc)

    def _on_unknown(self, ident: bytes, kind: FrameKind, bodies: list[bytes]) -> None:
        self.stats["unknown_peer"] += 1
        if kind is FrameKind.DISCONNECT:
            return
        if kind is FrameKind.REPLY and self.curve is None:
            # A node answering work handed out before a broker restart: still route it.
            for body in bodies:
                self._route_reply(body, None)
        now = time.monotonic()
        if now - self._warned.get(ident, 0.0) > min(self.heartbeat, 0.5):
            self._warned[ident] = now
            self._queue_other(
                ident,
                FrameKind.DISCONNECT,
                P.encode(
                    P.Disconnect(P.DisconnectCode.UNKNOWN_PEER, "unknown peer: REGISTER first")
                ),
            )

    # -- registration ----------------------------------------------------------------

    def _on_register(
        self, ident: bytes, bodies: list[bytes], key_role: Role | None, key: str | None = None
    ) -> None:
        try:
            reg = P.decode_register(bodies)
        except ProtocolError as exc:
            self._bad(ident, exc)
            reason = "bad role" if "role" in str(exc) else "protocol violation"
            self._reject(ident, None, reason, str(exc))
            return
        if not reg.name or len(reg.name) > 256:
            self._bad(ident, ProtocolError("REGISTER name must be 1..256 characters"))
            self._reject(ident, reg.name[:256], "protocol violation", "name must be 1..256 chars")
            return
        role = reg.role
        if key_role is not None and role is not key_role and key_role is not Role.ORCHESTRATOR:
            self.stats["unauthorized"] += 1
            log.warning(
                "peer %s claims role %s but its key allows %s", reg.name, role.value, key_role.value
            )
            self._reject(
                ident,
                reg.name,
                "bad role",
                f"claimed {role.value}, key {key} allows {key_role.value}",
            )
            self._queue_other(
                ident,
                FrameKind.DISCONNECT,
                P.encode(
                    P.Disconnect(
                        P.DisconnectCode.FORBIDDEN,
                        f"this key may only register as {key_role.value}",
                    )
                ),
            )
            return
        if role is Role.MONITOR and reg.types:
            self._bad(ident, ProtocolError("a monitor cannot host agent types"))
            self._reject(ident, reg.name, "bad role", "a monitor cannot host agent types")
            return
        now = time.monotonic()
        old = self._peers.get(ident)
        if old is not None:
            self._unroute(old)
        else:
            stale = self._names.get(reg.name)
            if stale is not None and stale in self._peers:
                self._drop_peer(self._peers[stale], "replaced by a new connection")
        peer = _Peer(ident, self._next_num, reg, role, now)
        self._next_num += 1
        if old is not None:
            peer.inflight, peer.queue = old.inflight, old.queue
        self._peers[ident] = peer
        self._names[reg.name] = ident
        for origin in peer.origins:
            self._origins[origin] = ident
        try:
            for type_ in reg.types:
                slot = self._router.add_agent(AgentId(type_, reg.name))
                if type_ not in self._typed_policy:
                    self._router.set_policy(type_, self.policy)
                    self._typed_policy.add(type_)
                peer.slots[type_] = slot
                self._slot_peer[slot] = ident
                self._known_types.add(type_)
            for pattern in reg.subscriptions:
                sid = self._router.subscribe(pattern, subscriber=peer.num)
                peer.sids.append(sid)
                self._sub_peer[peer.num] = ident
        except (RoutingError, ValueError) as exc:
            self._bad(ident, ProtocolError(f"bad REGISTER: {exc}"))
            self._reject(ident, reg.name, "protocol violation", f"bad REGISTER: {exc}")
            self._drop_peer(peer, "bad registration")
            return
        welcome = P.Welcome(
            self.broker_id, int(self.heartbeat * 1000), self.max_frame, self.client_credit
        )
        self._queue_other(ident, FrameKind.REGISTER, P.encode(welcome))
        log.info(
            "peer %s registered (%s; types %s; topics %s)",
            reg.name,
            role.value,
            reg.types,
            reg.subscriptions,
        )
        if self.audit is not None:
            record = {
                "peer": reg.name,
                "ident": ident.hex(),
                "role": role.value,
                "types": list(reg.types),
                "key": key,  # CURVE key fingerprint, None without CURVE
            }
            self._audit_event(NODE_REGISTERED, record)
        self._dirty.add(ident)
        for type_ in reg.types:
            parked = self._parked.pop(type_, None)
            while parked:
                self._queued -= 1
                self._route(parked.popleft()[1])

    def _unroute(self, peer: _Peer) -> None:
        for type_, slot in peer.slots.items():
            with contextlib.suppress(RoutingError):
                self._router.remove_agent(AgentId(type_, peer.name))
            self._slot_peer.pop(slot, None)
        peer.slots.clear()
        for sid in peer.sids:
            with contextlib.suppress(RoutingError):
                self._router.unsubscribe(sid)
        peer.sids.clear()
        self._sub_peer.pop(peer.num, None)

    def _drop_peer(self, peer: _Peer, why: str) -> None:
        """Forget ``peer`` and hand its queued and in-flight work to others."""
        if self._peers.pop(peer.ident, None) is None:
            return
        log.info(
            "peer %s gone (%s): redelivering %d in flight, %d queued",
            peer.name,
            why,
            len(peer.inflight),
            len(peer.queue),
        )
        self._unroute(peer)
        if self._names.get(peer.name) == peer.ident:
            del self._names[peer.name]
        for origin in peer.origins:
            if self._origins.get(origin) == peer.ident:
                del self._origins[origin]
        self._out.pop(peer.ident, None)
        self._dirty.discard(peer.ident)
        inflight, queued = list(peer.inflight.values()), list(peer.queue)
        self._queued -= len(queued)
        peer.inflight.clear()
        peer.queue.clear()
        for d in inflight:
            self._retry(d, f"peer {peer.name} {why}")
        for d in queued:  # never reached the peer: route again without an attempt
            d.slot, d.target = -1, None
            if d.env.recipient is None:
                self._finish(d, 0, "")
            else:
                self._route(d)

    # -- routing ---------------------------------------------------------------------

    def _on_deliver(self, peer: _Peer, bodies: list[bytes]) -> None:
        decode = self._codec.decode
        tracer = self.tracer
        for body in bodies:
            try:
                env = decode(body)
            except DecodeError as exc:
                self._bad(peer.ident, exc)
                continue
            if env.kind not in _ENVELOPE_KINDS:
                self._bad(peer.ident, ProtocolError(f"cannot submit a {env.kind.name} envelope"))
                continue
            self.stats["submitted"] += 1
            if env.kind is Kind.CANCEL:
                self._cancel(peer, env, body)
                continue
            if self._queued >= self.max_queued:
                self._nack(peer.ident, env.id, NackCode.BUSY, "broker queue full")
                continue
            if tracer is not None:
                env, body = self._hop(tracer, peer, env)
            d = _Delivery(env, body, peer.ident, [1])
            if self._persist:
                self.store.add(_key(env.id), body)
            self._route(d)

    def _hop(self, tracer: Tracer, peer: _Peer, env: Envelope) -> tuple[Envelope, bytes]:
        """A ``hop`` span for ``env``; the forwarded copy carries its traceparent."""
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
        with tracer.span(f"hop {target}", parent, kind="hop", attributes=attrs) as span:
            env = msgspec.structs.replace(env, traceparent=span.traceparent)
        return env, self._codec.encode(env)

    def _cancel(self, source: _Peer, env: Envelope, body: bytes) -> None:
        """Forward a CANCEL to the peer running its request; drop the request if queued.

        CANCEL is not tracked as a delivery (it may carry the request's own id); the
        submitter gets its ACK at once.
        """
        target = env.correlation or env.id
        for peer in self._peers.values():
            if target in peer.inflight:
                out = self._out.get(peer.ident)
                if out is None:
                    out = self._out[peer.ident] = Outbox()
                out.deliver.append(body)
                break
            for d in peer.queue:
                if d.key == target:
                    peer.queue.remove(d)
                    self._queued -= 1
                    if d.slot >= 0:
                        self._router.ack(d.slot)
                    self.store.remove(_key(d.key))
                    break
            else:
                continue
            break
        out = self._out.get(source.ident)
        if out is None:
            out = self._out[source.ident] = Outbox()
        out.acks.append(env.id)

    def _route(self, d: _Delivery) -> None:
        env = d.env
        if env.deadline and env.deadline < time.time():
            self._finish(d, NackCode.EXPIRED, "deadline passed before delivery")
            return
        recipient = env.recipient
        if recipient is None:
            topic = env.topic
            if topic is None:
                self._finish(d, NackCode.UNROUTABLE, "envelope has neither recipient nor topic")
                return
            try:
                subs = self._router.match(topic.type)
            except RoutingError as exc:
                self._finish(d, NackCode.UNROUTABLE, str(exc))
                return
            targets = [self._sub_peer[s] for s in subs if s in self._sub_peer]
            if not targets:
                self._finish(d, 0, "")  # a publish nobody listens to is done
                return
            d.group[0] = len(targets)
            for i, ident in enumerate(targets):
                copy = d if i == 0 else _Delivery(env, d.data, d.source, d.group)
                self._enqueue(self._peers[ident], copy)
            return
        target = self._choose(recipient, d)
        if target is None:
            type_ = recipient.type
            now = time.monotonic()
            if type_ in self._known_types:
                expiry = now + self.route_timeout
            else:
                expiry = self._started + self.startup_grace
            if now < expiry:
                self._parked.setdefault(type_, deque()).append((expiry, d))
                self._queued += 1
            else:
                self._finish(d, NackCode.UNROUTABLE, f"no node hosts agent type {type_!r}")
            return
        self._enqueue(target, d)

    def _choose(self, aid: AgentId, d: _Delivery) -> _Peer | None:
        if aid.key != ANY_KEY:
            ident = self._sticky.get(aid)
            if ident is not None:
                peer = self._peers.get(ident)
                if peer is not None and aid.type in peer.slots:
                    return peer
        try:
            slot = self._router.pick(aid.type)
        except RoutingError:
            return None
        d.slot = slot
        peer = self._peers[self._slot_peer[slot]]
        if aid.key != ANY_KEY:
            sticky = self._sticky
            if len(sticky) >= self.max_sticky:
                del sticky[next(iter(sticky))]
            sticky[aid] = peer.ident
        return peer

    def _enqueue(self, peer: _Peer, d: _Delivery) -> None:
        d.target = peer
        peer.queue.append(d)
        self._queued += 1
        self._dirty.add(peer.ident)

    def _dispatch(self) -> None:
        peers = self._peers
        for ident in self._dirty:
            peer = peers.get(ident)
            if peer is None:
                continue
            queue, inflight = peer.queue, peer.inflight
            if not queue or len(inflight) >= peer.window:
                continue
            out = self._out.get(ident)
            if out is None:
                out = self._out[ident] = Outbox()
            room = peer.window - len(inflight)
            n = 0
            while queue and n < room:
                d = queue.popleft()
                n += 1
                inflight[d.key] = d
                out.deliver.append(d.data)
                if d.source and d.env.kind is not Kind.SEND:  # a SEND's REPLY is its ACK
                    src = self._out.get(d.source)
                    if src is None:
                        src = self._out[d.source] = Outbox()
                    src.acks.append(d.key)
                    d.source = b""
            self._queued -= n
            self.stats["delivered"] += n
        self._dirty.clear()

    # -- completions -----------------------------------------------------------------

    def _on_reply(self, peer: _Peer, bodies: list[bytes]) -> None:
        for body in bodies:
            self._route_reply(body, peer)

    def _route_reply(self, body: bytes, peer: _Peer | None) -> None:
        try:
            env = self._codec.decode(body)
        except DecodeError as exc:
            self._bad(peer.ident if peer else b"?", exc)
            return
        corr = env.correlation
        if env.kind not in (Kind.REPLY, Kind.ERROR) or corr is None:
            self._bad(
                peer.ident if peer else b"?",
                ProtocolError("a REPLY body must be a REPLY/ERROR envelope with correlation"),
            )
            return
        if peer is not None:
            d = peer.inflight.pop(corr, None)
            if d is not None:
                self._complete(peer, d)
        dest = self._origins.get(corr.origin)
        if dest is None:
            return
        self.stats["replies"] += 1
        out = self._out.get(dest)
        if out is None:
            out = self._out[dest] = Outbox()
        out.reply.append(body)

    def _on_ack(self, peer: _Peer, ids: list[MessageId]) -> None:
        inflight = peer.inflight
        for mid in ids:
            d = inflight.pop(mid, None)
            if d is not None:
                self._complete(peer, d)

    def _on_nack(self, peer: _Peer, items: list[NackItem]) -> None:
        for item in items:
            d = peer.inflight.pop(item.id, None)
            if d is None:
                continue
            self.stats["nacked"] += 1
            self._dirty.add(peer.ident)
            if d.slot >= 0:
                self._router.ack(d.slot)
                d.slot = -1
            if item.code == NackCode.REJECTED:
                if d.env.recipient is not None:
                    self._sticky.pop(d.env.recipient, None)
                self._retry(d, f"rejected by {peer.name}: {item.reason}")
            else:
                self._finish(d, item.code, item.reason)

    def _complete(self, peer: _Peer, d: _Delivery) -> None:
        self.stats["completed"] += 1
        if d.slot >= 0:
            self._router.ack(d.slot)
        if peer.queue:  # room in its window for work waiting here
            self._dirty.add(peer.ident)
        d.group[0] -= 1
        if d.group[0] <= 0 and self._persist:
            self.store.remove(_key(d.key))

    def _retry(self, d: _Delivery, why: str) -> None:
        d.slot = -1
        d.target = None
        d.attempts += 1
        if d.attempts >= self.max_attempts:
            self.stats["dead_lettered"] += 1
            reason = f"dead-lettered after {d.attempts} attempts: {why}"
            self.store.add_dead(_key(d.key), d.data, reason, d.attempts)
            self._finish(d, NackCode.DEAD_LETTERED, reason)
            return
        if d.env.recipient is None:
            # A topic copy belongs to the subscriber that vanished: nobody else should get it.
            self._finish(d, 0, "")
            return
        self.stats["redelivered"] += 1
        d.env = msgspec.structs.replace(d.env, attempt=d.attempts)
        d.data = self._codec.encode(d.env)
        self._route(d)

    def _finish(self, d: _Delivery, code: int, reason: str) -> None:
        """End a delivery without a node's answer: NACK the submitter when ``code``."""
        d.group[0] -= 1
        if d.group[0] <= 0 and self._persist:
            self.store.remove(_key(d.key))
        if code:
            dest = d.source or self._origins.get(d.key.origin)
            if dest:
                self._nack(dest, d.key, NackCode(code), reason)
        elif d.source:
            self._ack_source(d)

    def _ack_source(self, d: _Delivery) -> None:
        out = self._out.get(d.source)
        if out is None:
            out = self._out[d.source] = Outbox()
        out.acks.append(d.key)
        d.source = b""

    def _nack(self, dest: bytes, mid: MessageId, code: NackCode, reason: str) -> None:
        out = self._out.get(dest)
        if out is None:
            out = self._out[dest] = Outbox()
        out.nacks.append(NackItem(mid, int(code), reason))

    def _nack_body(self, dest: bytes, body: bytes, code: NackCode, reason: str) -> None:
        try:
            env = self._codec.decode(body)
        except DecodeError:
            return
        self._nack(dest, env.id, code, reason)

    # -- timers ----------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        hb = P.frames(FrameKind.HEARTBEAT)
        due = self._next_heartbeat <= now
        if due:
            self._next_heartbeat = now + self.heartbeat
        for peer in list(self._peers.values()):
            interval = peer.heartbeat or self.heartbeat
            if now - peer.last_seen > 3 * interval:
                self.stats["peers_dead"] += 1
                self._drop_peer(peer, f"silent for {now - peer.last_seen:.2f} s")
            elif due:
                self._queue_raw(peer.ident, list(hb))
        for type_, parked in list(self._parked.items()):
            if any(expiry <= now for expiry, _ in parked):
                keep: deque[tuple[float, _Delivery]] = deque()
                for expiry, d in parked:
                    if expiry > now:
                        keep.append((expiry, d))
                        continue
                    self._queued -= 1
                    self._finish(d, NackCode.UNROUTABLE, f"no node hosts agent type {type_!r}")
                parked = self._parked[type_] = keep
            if not parked:
                del self._parked[type_]

    _next_heartbeat = 0.0

    # -- output ----------------------------------------------------------------------

    def _queue_other(self, ident: bytes, kind: FrameKind, body: bytes) -> None:
        self._queue_raw(ident, P.frames(kind, body))

    def _queue_raw(self, ident: bytes, frames: list[bytes]) -> None:
        out = self._out.get(ident)
        if out is None:
            out = self._out[ident] = Outbox()
        out.other.append(frames)

    def _flush(self, io: FrameIO) -> None:
        outs = self._out
        self._out = {}
        for ident, out in outs.items():
            for frames in out.messages():
                if not self._send(io, ident, frames):
                    break

    def _send(self, io: FrameIO, ident: bytes, frames: list[bytes]) -> bool:
        if self.hmac_key is not None:
            P.sign(frames, self.hmac_key)
        try:
            if io.send(frames, ident):
                return True
        except zmq.Again:  # refused after the first part (not expected): as a full queue
            pass
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                peer = self._peers.get(ident)
                if peer is not None:
                    self._drop_peer(peer, "unreachable")
                return False
            raise
        log.warning("peer %s not reading (send queue full): message dropped", ident.hex())
        return False

    # -- restore & metrics -----------------------------------------------------------

    def _restore(self) -> None:
        rows = self.store.load_pending()
        for _, data in rows:
            try:
                env = self._codec.decode(data)
            except DecodeError:
                continue
            self._route(_Delivery(env, data, b"", [1]))
        if rows:
            log.info("restored %d pending messages from the store", len(rows))

    def _start_metrics(self) -> None:
        if self.metrics_port is None:
            return
        from engine.mesh._metrics import MeshCollector
        from engine.observe.instrument import serve
        from engine.observe.metrics import Metrics

        metrics = Metrics()
        metrics.registry.register(MeshCollector(self))
        self.observe = serve(self, self.metrics_port, host=self.metrics_host, metrics=metrics)

    def _stop_metrics(self) -> None:
        srv, self.observe = self.observe, None
        if srv is not None:
            srv.close()

    # -- introspection (tests, monitors) ---------------------------------------------

    @property
    def queued(self) -> int:
        """Messages held by the broker that no node has received yet."""
        return self._queued

    def peers(self) -> dict[str, dict[str, Any]]:
        """A snapshot of registered peers: role, types, window, in flight, queued."""
        return {
            p.name: {
                "role": p.role.value,
                "types": sorted(p.slots),
                "window": p.window,
                "inflight": len(p.inflight),
                "queued": len(p.queue),
            }
            for p in list(self._peers.values())
        }


def _key(mid: MessageId) -> str:
    return f"{mid.origin}:{mid.seq}"
