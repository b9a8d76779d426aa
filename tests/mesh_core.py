"""Drive a :class:`~engine.mesh.BrokerCore` without sockets: peers are routing ids, time is
a number, and every message the core sends lands in that peer's inbox (decoded)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from engine.mesh import BrokerConfig, BrokerCore
from engine.mesh import protocol as P
from engine.mesh._core_base import Output
from engine.mesh._store import MeshWrites
from engine.mesh.protocol import FrameKind
from engine.messages import AgentId, Envelope, Kind, MessageId, decode, encode, encode_payload

__all__ = ["Harness", "env"]

WALL = 1_000_000.0  # the wall clock is the core's clock plus this


def env(
    mid: MessageId,
    kind: Kind = Kind.SEND,
    *,
    to: AgentId | None = None,
    topic: str | None = None,
    correlation: MessageId | None = None,
    payload: Any = None,
    **fields: Any,
) -> bytes:
    from engine.messages import TopicId

    return encode(
        Envelope(
            mid,
            kind,
            recipient=to,
            topic=TopicId(topic) if topic is not None else None,
            correlation=correlation,
            payload=encode_payload(payload),
            **fields,
        )
    )


class Harness:
    """One core, a fake clock, and per-peer inboxes of what the core sent."""

    def __init__(self, config: BrokerConfig | None = None, **core: Any) -> None:
        self.now = 0.0
        self.core = BrokerCore(
            config or BrokerConfig(heartbeat=0.1, startup_grace=0.2), now=0.0, wall=WALL, **core
        )
        self.inbox: dict[bytes, list[list[bytes]]] = defaultdict(list)
        self.writes: list[MeshWrites] = []
        self.audit: list[tuple[str, dict[str, Any]]] = []

    # -- input ----------------------------------------------------------------------------

    def send(self, ident: bytes, frames: list[bytes], user_id: str | None = None) -> Output:
        self.core.receive(ident, frames, self.now, user_id)
        return self.step()

    def kind(self, ident: bytes, kind: FrameKind, *bodies: bytes) -> Output:
        return self.send(ident, P.frames(kind, *bodies))

    def register(self, ident: bytes, name: str, **fields: Any) -> P.Welcome | P.Disconnect:
        """REGISTER ``ident``: the Welcome, or the DISCONNECT that refused it."""
        self.kind(ident, FrameKind.REGISTER, P.encode(P.Register(name, **fields)))
        refused = self.take(ident, FrameKind.DISCONNECT)
        if refused:
            return P.decode_disconnect(refused[-1])
        return P.decode_welcome(self.take(ident, FrameKind.REGISTER)[-1])

    def submit(self, ident: bytes, *bodies: bytes) -> Output:
        return self.kind(ident, FrameKind.DELIVER, *bodies)

    def step(self) -> Output:
        out = self.core.output()
        for ident, frames in out.messages:
            self.inbox[ident].append(frames)
        if out.writes:
            self.writes.append(out.writes)
        self.audit += out.audit
        return out

    def beat(self, *idents: bytes) -> None:
        """A HEARTBEAT from each of ``idents``."""
        for ident in idents:
            self.core.receive(ident, P.frames(FrameKind.HEARTBEAT), self.now)

    def advance(self, seconds: float) -> Output:
        self.now += seconds
        self.core.tick(self.now, self.now + WALL)
        return self.step()

    # -- output ---------------------------------------------------------------------------

    def take(self, ident: bytes, kind: FrameKind) -> list[list[bytes]]:
        """Remove and return the bodies of every ``kind`` message in ``ident``'s inbox."""
        box = self.inbox[ident]
        got = [m[1:] for m in box if m[0][4] & 0x7F == kind]
        box[:] = [m for m in box if m[0][4] & 0x7F != kind]
        return got

    def delivered(self, ident: bytes) -> list[Envelope]:
        return [decode(b) for m in self.take(ident, FrameKind.DELIVER) for b in m]

    def replies(self, ident: bytes) -> list[Envelope]:
        return [decode(b) for m in self.take(ident, FrameKind.REPLY) for b in m]

    def acks(self, ident: bytes) -> list[MessageId]:
        return [i for m in self.take(ident, FrameKind.ACK) for i in P.decode_ids(m)]

    def nacks(self, ident: bytes) -> list[P.NackItem]:
        return [i for m in self.take(ident, FrameKind.NACK) for i in P.decode_nacks(m)]

    def reply_to(self, ident: bytes, request: Envelope, payload: Any = None) -> Output:
        """``ident`` (a node) answers ``request``."""
        body = env(
            MessageId("node-" + ident.hex(), request.id.seq),
            Kind.REPLY,
            correlation=request.id,
            payload=payload,
        )
        return self.kind(ident, FrameKind.REPLY, body)
