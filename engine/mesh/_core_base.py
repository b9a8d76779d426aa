"""The broker core's state, its output type and the helpers every part of it uses.

:class:`engine.mesh.broker_core.BrokerCore` is this state plus two mixins: registration
(``engine.mesh._registration``) and the flow of messages (``engine.mesh._flow``).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from engine.mesh import protocol as P
from engine.mesh._config import BrokerConfig
from engine.mesh._dispatch import Dispatcher
from engine.mesh._outbox import Outbox
from engine.mesh._signing import Keys, Session
from engine.mesh._state import Delivery, Peer
from engine.mesh._store import DeadLetter, MeshWrites
from engine.mesh.protocol import ErrorCode, NackCode, NackItem, Role
from engine.messages import Codec, MessageId
from engine.observe.tracing import Tracer

__all__ = ["MAX_CLAIMS", "MAX_WARNED", "CoreBase", "Output"]

log = logging.getLogger("engine.mesh.broker")

MAX_CLAIMS: Final = 100_000  # recovery claims and resume notes remembered
MAX_WARNED: Final = 10_000  # rate-limit stamps of misbehaving connections
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


class CoreBase:
    """The broker core's state and small helpers (its logic is in the mixins)."""

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

    # -- implemented by the mixins (engine.mesh._registration, engine.mesh._flow) --------

    def _drop(self, peer: Peer, why: str) -> None:
        raise NotImplementedError

    def _assign_claimed(self, d: Delivery, peer: Peer) -> None:
        raise NotImplementedError

    def _retry(self, d: Delivery, why: str, avoid: Peer | None = None) -> None:
        raise NotImplementedError

    def _final(self, d: Delivery, code: NackCode, reason: str) -> None:
        raise NotImplementedError

    def _copy_done(self, d: Delivery, dispatched: bool) -> None:
        raise NotImplementedError
