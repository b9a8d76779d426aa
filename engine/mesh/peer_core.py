"""A mesh peer's protocol logic as a sans-IO core: frames in, events and frames out.

:class:`PeerCore` is the state machine of one DEALER connection to the broker, without a
socket, a loop or a clock of its own (time comes in as an argument). Its shell
(:class:`engine.mesh.MeshPeer`) owns the socket, the futures and the handlers::

    core.register(types, subscriptions, credit, now)   # queue a REGISTER
    events = core.receive(frames, now)                 # what the broker's message means
    core.submit(mid, data, send=True)                  # a SEND/PUBLISH/CANCEL, in the window
    core.answer(mid, reply, now)                       # a node answers a delivery
    msgs = core.take_output()                          # frames to send (signed under HMAC)

It keeps the submission window and the backlog beyond it, the requests awaiting a reply
(at most one reply each is ever reported), the deliveries running here and a cache of
the answers given (bounded in count and bytes: a repeat of a delivery is answered from it,
never run twice), the HMAC session and the registration state. After the broker restarts
it re-registers naming the work it holds (``Register.held``) and the work it will resend
(``Register.resume``), so the broker sends each resubmission back to the node that has it.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Final

from engine.errors import (
    DeadlineExceeded,
    DecodeError,
    EngineError,
    ProtocolError,
    RegistrationRefused,
    UndeliverableError,
)
from engine.mesh import protocol as P
from engine.mesh._outbox import Outbox
from engine.mesh._signing import Keys, Session, new_session
from engine.mesh.protocol import DisconnectCode, FrameKind, NackCode, NackItem, Role
from engine.messages import Codec, Envelope, Kind, MessageId

__all__ = [
    "Accepted",
    "Cancelled",
    "Delivered",
    "Event",
    "PeerCore",
    "Refused",
    "Replied",
    "Welcomed",
    "nack_error",
]

log = logging.getLogger("engine.mesh.peer")

_LABELS: Final = {
    NackCode.UNROUTABLE: "unroutable",
    NackCode.DEAD_LETTERED: "dead-lettered",
    NackCode.FORBIDDEN: "forbidden",
    NackCode.EXPIRED: "expired",
    NackCode.INVALID: "invalid",
    NackCode.CANCELLED: "cancelled",
    NackCode.REJECTED: "rejected",
    NackCode.BUSY: "busy",
}
_HELD_WINDOW: Final = 3.0  # heartbeats before the last word from the broker (see _held)


def nack_error(code: int, reason: str) -> EngineError:
    """The exception a final NACK raises at its sender (the same in a MeshClient and a
    ``Runtime(mesh=...)``: the runtime gets it through ``engine.runtime._wire``)."""
    label = (
        _LABELS.get(NackCode(code), "refused") if code in NackCode._value2member_map_ else "refused"
    )
    if code == NackCode.EXPIRED:
        return DeadlineExceeded(f"{label}: {reason}")
    return UndeliverableError(f"{label}: {reason}")


class Welcomed:
    """The broker accepted the REGISTER; ``restarted``: a new broker (or it forgot us)."""

    __slots__ = ("restarted",)

    def __init__(self, restarted: bool) -> None:
        self.restarted = restarted


class Replied:
    """The one REPLY/ERROR for a request of ours (``env.correlation`` is its id)."""

    __slots__ = ("env",)

    def __init__(self, env: Envelope) -> None:
        self.env = env


class Accepted:
    """The broker ACKed these submissions."""

    __slots__ = ("ids",)

    def __init__(self, ids: list[MessageId]) -> None:
        self.ids = ids


class Refused:
    """The broker NACKed a submission: final (``error``) or BUSY (resubmit ``data`` after
    ``retry_ms``)."""

    __slots__ = ("data", "error", "mid", "retry_ms")

    def __init__(
        self, mid: MessageId, error: EngineError | None, retry_ms: int, data: bytes | None
    ) -> None:
        self.mid = mid
        self.error = error
        self.retry_ms = retry_ms
        self.data = data


class Delivered:
    """A delivery to run here (never one already running or answered)."""

    __slots__ = ("env", "tell")

    def __init__(self, env: Envelope, tell: bool) -> None:
        self.env = env
        self.tell = tell  # a one-way PUBLISH to an agent: acknowledged once handled


class Cancelled:
    """The sender cancelled ``target`` (a delivery running here)."""

    __slots__ = ("env", "target")

    def __init__(self, target: MessageId, env: Envelope) -> None:
        self.target = target
        self.env = env


class Disconnected:
    """The broker said DISCONNECT; ``fatal`` set when retrying cannot help."""

    __slots__ = ("code", "fatal", "reason")

    def __init__(self, code: int, reason: str, fatal: EngineError | None) -> None:
        self.code = code
        self.reason = reason
        self.fatal = fatal


Event = Welcomed | Replied | Accepted | Refused | Delivered | Cancelled | Disconnected


class PeerCore:
    """The protocol state of one peer (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        role: Role,
        origin: str,
        heartbeat: float,
        keys: Keys | None = None,
        max_frame: int = P.MAX_FRAME,
        cache_size: int = 100_000,
        cache_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.name = name
        self.role = role
        self.origin = origin
        self.instance = os.urandom(16).hex()
        self.heartbeat = heartbeat
        self.keys = keys
        self.codec = Codec(max_frame)
        self.max_frame = max_frame
        self.broker_id: str | None = None
        self.registered = False
        self.forgotten = False  # the broker lost us (restart, reconnect): resend on welcome
        self.window = 0
        self.last_heard = 0.0
        self.known_at = 0.0  # last word from a broker that knew us (not a DISCONNECT)
        self.out = Outbox()
        self.stats: dict[str, int] = dict.fromkeys(
            ("executed", "duplicates", "replies", "resent", "reconnects", "malformed", "notices"), 0
        )
        # client side
        self.unacked: dict[MessageId, bytes] = {}  # submitted, awaiting ACK/REPLY/NACK
        self.backlog: deque[tuple[MessageId, bytes]] = deque()  # beyond the window
        self.requests: dict[MessageId, bytes] = {}  # SENDs awaiting their reply
        # node side
        self.running: set[MessageId] = set()
        self.tells: set[MessageId] = set()
        self.done: OrderedDict[MessageId, tuple[float, bytes | None]] = OrderedDict()
        self.done_bytes = 0
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        # HMAC: the session of the REGISTER in flight, then the broker's
        self._hello: Session | None = None
        self.session: Session | None = None
        self._previous: Session | None = None  # the session before a re-registration

    # -- registration -------------------------------------------------------------------

    def register(
        self, types: Iterable[str], subscriptions: Iterable[str], credit: int, now: float
    ) -> None:
        """Queue a REGISTER (names the work held and to resend when the broker forgot us)."""
        held: list[MessageId] = []
        resume: list[MessageId] = []
        if self.forgotten:
            held = self._held(now)
            resume = list(dict.fromkeys([*self.unacked, *self.requests]))[: P.MAX_HELD]
        reg = P.Register(
            name=self.name,
            role=self.role,
            types=list(types),
            subscriptions=list(subscriptions),
            origins=[self.origin],
            credit=credit,
            heartbeat_ms=int(self.heartbeat * 1000),
            instance=self.instance,
            held=held,
            resume=resume,
        )
        msg = P.frames(FrameKind.REGISTER, P.encode(reg))
        if self.keys is not None:
            self._hello = Session(self.keys, new_session(), broker=False)
        self.out.other.append(msg)

    def _held(self, now: float) -> list[MessageId]:
        """Deliveries running here, and those answered since shortly before we last heard
        from the broker (their answers may have died with it)."""
        held = list(self.running)
        cutoff = self.known_at - _HELD_WINDOW * self.heartbeat - 1.0
        for mid, (at, _) in reversed(self.done.items()):
            if at < cutoff or len(held) >= P.MAX_HELD:
                break
            held.append(mid)
        return held[: P.MAX_HELD]

    def lost_connection(self) -> None:
        """The socket is replaced (broker silent): register again, resend on welcome."""
        self.registered = False
        self.forgotten = True
        self.session = self._previous = None
        self._hello = None
        self.stats["reconnects"] += 1
        # what was queued for the old connection is resent on welcome (or was answered)
        self.out.deliver.clear()
        self.out.other.clear()

    # -- input --------------------------------------------------------------------------

    def receive(self, msg: list[bytes], now: float) -> list[Event]:
        """What one message from the broker means. Raises ProtocolError/DecodeError for a
        message that breaks the protocol (the shell counts and drops it)."""
        kind, bodies, trailer = P.parse(msg)
        if self.keys is not None:
            self._verify(kind, msg, trailer)
        self.last_heard = now
        if self.registered and kind is not FrameKind.DISCONNECT:
            self.known_at = now
        if kind is FrameKind.REPLY:
            return self._on_reply(bodies)
        if kind is FrameKind.DELIVER:
            return self._on_deliver(bodies)
        if kind is FrameKind.ACK:
            return self._on_ack(P.decode_ids(bodies))
        if kind is FrameKind.NACK:
            return self._on_nack(P.decode_nacks(bodies))
        if kind is FrameKind.REGISTER:
            return self._on_welcome(P.decode_welcome(bodies))
        if kind is FrameKind.DISCONNECT:
            return self._on_disconnect(P.decode_disconnect(bodies))
        if kind is FrameKind.ERROR:
            notice = P.decode_notice(bodies)
            self.stats["notices"] += 1
            log.warning("%s: the broker dropped a message of ours: %s", self.name, notice.reason)
        return []

    def _verify(self, kind: FrameKind, msg: list[bytes], trailer: bytes | None) -> None:
        assert self.keys is not None
        if trailer is None:
            raise ProtocolError("unsigned message while HMAC signatures are required")
        signed = msg[:-1]
        if kind is FrameKind.REGISTER:  # the welcome: in the session of our REGISTER
            if self._hello is None:
                raise ProtocolError("a welcome we did not ask for")
            session, _ = self.keys.verify(signed, trailer, self._hello.recv_dir)
            if session != self._hello.session:
                raise ProtocolError("a welcome for another REGISTER (a replay?)")
            return
        current = self.session or self._hello
        if current is None:
            raise ProtocolError("a signed message before any REGISTER")
        if kind is FrameKind.DISCONNECT or kind is FrameKind.ERROR:
            session, counter = self.keys.verify(signed, trailer, current.recv_dir)
            if session != current.session:
                raise ProtocolError("message signed in another session (a replay?)")
            if counter == 0:  # a notice from a broker that could not place us
                return
        if self.session is None:
            raise ProtocolError("a signed message before the welcome")
        try:
            self.session.open(signed, trailer)
            self._previous = None  # the broker speaks the new session: the old one is over
        except ProtocolError:
            # registered again on this connection: what the broker sent before it took the
            # new session is still signed in the old one
            if self._previous is None:
                raise
            self._previous.open(signed, trailer)

    def _on_welcome(self, welcome: P.Welcome) -> list[Event]:
        previous, self.broker_id = self.broker_id, welcome.broker
        self.max_frame = welcome.max_frame
        if 0 < welcome.heartbeat_ms < self.heartbeat * 1000:  # the broker bounds it
            self.heartbeat = welcome.heartbeat_ms / 1000
        self.window = welcome.credit
        self.registered = True
        if self.keys is not None:
            try:
                session = bytes.fromhex(welcome.session)
            except ValueError:
                session = b""
            if len(session) != 8:
                raise ProtocolError("a welcome without an 8-byte session under HMAC")
            self._previous, self.session = self.session, Session(self.keys, session, broker=False)
            self._hello = None
            self.out.other.append(P.frames(FrameKind.HEARTBEAT))  # activates the session
        forgotten, self.forgotten = self.forgotten, False
        restarted = previous is not None and (forgotten or previous != welcome.broker)
        if restarted:
            # re-registered (broker restarted, or it forgot us): resend everything unanswered
            pending = list(self.unacked.items())
            pending += [
                (mid, data) for mid, data in self.requests.items() if mid not in self.unacked
            ]
            if pending:
                log.info("%s: re-registered; resending %d messages", self.name, len(pending))
                self.stats["resent"] += len(pending)
                for mid, data in pending:
                    self.unacked[mid] = data
                    self.out.deliver.append(data)
        self.pump()
        return [Welcomed(restarted)]

    def _on_disconnect(self, msg: P.Disconnect) -> list[Event]:
        code = msg.code
        self.registered = False
        if code in (DisconnectCode.UNKNOWN_PEER, DisconnectCode.SHUTDOWN, DisconnectCode.RETRY):
            self.forgotten = True
            return [Disconnected(code, msg.reason, None)]
        fatal = RegistrationRefused(f"broker refused this peer: {msg.reason}", code)
        return [Disconnected(code, msg.reason, fatal)]

    # -- client side --------------------------------------------------------------------

    def submit(self, mid: MessageId, data: bytes, *, request: bool = False) -> bool:
        """Submit an encoded envelope: True if it went into the window (queued for the next
        flush), False if it waits in the backlog."""
        if request:
            self.requests[mid] = data
        if self.registered and len(self.unacked) < self.window:
            self.unacked[mid] = data
            self.out.deliver.append(data)
            return True
        self.backlog.append((mid, data))
        return False

    def pump(self) -> int:
        """Move backlog into the window; how many moved."""
        backlog, unacked = self.backlog, self.unacked
        if not self.registered:
            return 0
        n = 0
        window = self.window
        while backlog and len(unacked) < window:
            mid, data = backlog.popleft()
            if mid in unacked:
                continue
            unacked[mid] = data
            self.out.deliver.append(data)
            n += 1
        return n

    def forget(self, mid: MessageId) -> None:
        """The caller stopped waiting for ``mid`` (it got its answer, or gave up)."""
        self.requests.pop(mid, None)
        self.unacked.pop(mid, None)

    def _on_reply(self, bodies: list[bytes]) -> list[Event]:
        decode, requests, unacked = self.codec.decode, self.requests, self.unacked
        events: list[Event] = []
        for body in bodies:
            env = decode(body)
            corr = env.correlation
            if corr is None or (env.kind is not Kind.REPLY and env.kind is not Kind.ERROR):
                raise ProtocolError("a REPLY body must be a REPLY/ERROR envelope with correlation")
            unacked.pop(corr, None)
            if requests.pop(corr, None) is None:
                continue  # not ours, or a second reply (after a resend): never reported twice
            self.stats["replies"] += 1
            events.append(Replied(env))
        return events

    def _on_ack(self, ids: list[MessageId]) -> list[Event]:
        unacked = self.unacked
        for mid in ids:
            unacked.pop(mid, None)
        return [Accepted(ids)]

    def _on_nack(self, items: list[NackItem]) -> list[Event]:
        events: list[Event] = []
        for item in items:
            mid = item.id
            data = self.unacked.pop(mid, None)
            if item.code == NackCode.BUSY:
                if data is not None:
                    events.append(Refused(mid, None, max(1, item.retry_ms), data))
                continue
            self.requests.pop(mid, None)
            events.append(Refused(mid, nack_error(item.code, item.reason), 0, data))
        return events

    # -- node side ----------------------------------------------------------------------

    def _on_deliver(self, bodies: list[bytes]) -> list[Event]:
        decode = self.codec.decode
        events: list[Event] = []
        done, running = self.done, self.running
        for body in bodies:
            try:
                env = decode(body)
            except DecodeError as exc:
                self.stats["malformed"] += 1
                log.warning("%s: undecodable delivery dropped: %s", self.name, exc)
                continue
            mid = env.id
            kind = env.kind
            if kind is Kind.CANCEL:
                events.append(Cancelled(env.correlation or mid, env))
                continue
            cached = done.get(mid)
            if cached is not None:
                self.stats["duplicates"] += 1
                if cached[1] is None:
                    self.out.acks.append(mid)
                else:
                    self.out.reply.append(cached[1])
                continue
            if mid in running:
                self.stats["duplicates"] += 1
                continue
            running.add(mid)
            tell = kind is Kind.PUBLISH and env.recipient is not None
            if tell:
                self.tells.add(mid)
            events.append(Delivered(env, tell))
        return events

    def answer(self, mid: MessageId, reply: bytes | None, now: float) -> None:
        """A delivery finished here: queue its REPLY (``reply``) or ACK, and remember it."""
        self.running.discard(mid)
        self.stats["executed"] += 1
        if mid in self.tells:  # a one-way message: its ACK says it was handled
            self.tells.discard(mid)
            reply = None
        if reply is None:
            self.out.acks.append(mid)
        else:
            self.out.reply.append(reply)
        self._remember(mid, reply, now)

    def reject(self, mid: MessageId, reason: str) -> None:
        """Hand a delivery back to the broker (it routes it elsewhere)."""
        self.running.discard(mid)
        self.tells.discard(mid)
        self.out.nacks.append(NackItem(mid, int(NackCode.REJECTED), reason[: P.MAX_REASON]))

    def _remember(self, mid: MessageId, data: bytes | None, now: float) -> None:
        done = self.done
        old = done.pop(mid, None)
        if old is not None and old[1] is not None:
            self.done_bytes -= len(old[1])
        done[mid] = (now, data)
        if data is not None:
            self.done_bytes += len(data)
        while done and (len(done) > self.cache_size or self.done_bytes > self.cache_bytes):
            _, (_, gone) = done.popitem(last=False)
            if gone is not None:
                self.done_bytes -= len(gone)

    # -- output -------------------------------------------------------------------------

    def take_output(self) -> list[list[bytes]]:
        """The messages to send now (signed under HMAC). Before the welcome, only REGISTER
        and DISCONNECT leave; the rest waits."""
        out = self.out
        if not out:
            return []
        if not self.registered:
            msgs, out.other = out.other, []
        else:
            self.out = Outbox()
            msgs = out.messages()
        if self.keys is None:
            return msgs
        return [self._seal(m) for m in msgs]

    def _seal(self, msg: list[bytes]) -> list[bytes]:
        session = self.session
        if msg[0] == P.header(FrameKind.REGISTER) or session is None:
            session = self._hello
        if session is None:  # an HMAC peer with no session yet: a fresh one for this message
            session = self._hello = Session(self.keys, new_session(), broker=False)  # type: ignore[arg-type]
        return session.seal(msg)

    def requeue(self, msgs: list[list[bytes]]) -> None:
        """Messages a send refused: unsign them and put them back for the next flush."""
        for m in msgs:
            if self.keys is not None:
                m[0] = P.header(m[0][4] & 0x7F)
                m.pop()
            self.out.other.append(m)
